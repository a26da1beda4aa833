"""No PHI from the input DICOM headers reaches anything a pipeline run leaves behind.

Every file under the project's ``runs/`` folder (MLflow database and artifacts, kfp outputs, archives, reports,
Data Docs) is searched, as bytes, for every PHI value found in the phantom's headers. Copies of the project's own
source code (the MLflow model ships it) are skipped: they are code, not data, and the phantom generator holds its
fictional names and institutions as constants.
"""

import hashlib
from pathlib import Path

import pydicom

from components.dicomio import PHI_TAGS

PHI_KEYWORDS = sorted(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "AccessionNumber",
        "InstitutionName",
        "ReferringPhysicianName",
        *PHI_TAGS,
    }
)
REPO = Path(__file__).resolve().parents[2]


def phi_values(data_dir: Path) -> dict[bytes, str]:
    """PHI value (UTF-8 bytes) -> 'Keyword of file', for every PHI element of every DICOM file in ``data_dir``."""
    found: dict[bytes, str] = {}
    for path in sorted(data_dir.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in PHI_KEYWORDS:
            element = ds.get(keyword)
            if element in (None, ""):
                continue
            values = element if isinstance(element, pydicom.multival.MultiValue) else [element]
            for value in map(str, values):
                variants = {value}
                if "^" in value:  # person names: also as displayed, and each name part of 4+ letters
                    parts = [p for p in value.split("^") if p]
                    variants |= {" ".join(parts), " ".join(reversed(parts[:2]))}
                    variants |= {p for p in parts if len(p) >= 4}
                for v in variants:
                    if len(v.strip()) >= 4:
                        found.setdefault(v.strip().encode("utf-8"), f"{keyword} of {path.relative_to(data_dir)}")
    return found


def source_hashes() -> set[str]:
    return {
        hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in ("components", "pipeline")
        for p in (REPO / folder).rglob("*.py")
    }


def test_no_phi_value_in_any_run_output(tiny_project, phantom_dir):
    project, run = tiny_project
    assert run.report.is_file()
    phi = phi_values(phantom_dir)
    keywords = {where.split(" of ")[0] for where in phi.values()}
    assert {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName"} <= keywords
    assert {"ReferringPhysicianName", "OperatorsName", "InstitutionAddress"} <= keywords

    # positive control: the same search finds the values in an input file
    first = next(iter(sorted(phantom_dir.rglob("*.dcm")))).read_bytes()
    assert sum(value in first for value in phi) >= 5

    code = source_hashes()
    files = [p for p in sorted((project / "runs").rglob("*")) if p.is_file() and not p.is_symlink()]
    scanned, leaks = 0, []
    for path in files:
        rel = path.relative_to(project)
        data = path.read_bytes()
        if path.suffix == ".py" and hashlib.sha256(data).hexdigest() in code:
            continue
        scanned += 1
        name = str(rel).encode("utf-8")
        leaks += [f"{rel}: {value!r} ({where})" for value, where in phi.items() if value in data or value in name]
    kinds = {p.suffix for p in files}
    assert {".db", ".html", ".json", ".parquet", ".npy"} <= kinds, kinds  # MLflow db, report/docs, archive, ...
    assert scanned > 50, scanned
    assert not leaks, "PHI found in run outputs:\n" + "\n".join(leaks[:30])
