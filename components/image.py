"""Where the container image that every component runs in is named (built from the repository's Dockerfile)."""

import os

VERSION = "0.1.0"
# Override at compile time, e.g. MEDGAN_IMAGE=registry.example.org/medgan-ops:0.1.0 medgan compile
BASE_IMAGE = os.environ.get("MEDGAN_IMAGE", f"ghcr.io/medgan-ops/medgan-ops:{VERSION}")
