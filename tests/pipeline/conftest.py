"""A local pipeline run on the tiny preset, shared by the pipeline tests that only read its outputs."""

import pytest


@pytest.fixture(scope="session")
def tiny_project(phantom_dir, tmp_path_factory):
    """(project folder, LocalRun) of one whole local pipeline run on the phantom, tiny preset.

    Tests may add runs to the project (the two-run gate test does), never remove any.
    """
    from components.config import resolve
    from pipeline.local import run_local

    project = tmp_path_factory.mktemp("project")
    return project, run_local(phantom_dir, resolve("tiny"), project_dir=project)
