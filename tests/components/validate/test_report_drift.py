"""The review report's data-validation section shows the drift check, or why it was skipped."""

from components.evaluate.report import render_report


def _validation(drift):
    return {"validation": {"results": [], "drift": drift}}


def test_drift_table_marks_classes_above_the_limit():
    drift = {
        "status": "checked",
        "reference": "champion 'm' version 3 <run>",
        "max_class_drift": 0.1,
        "total_variation": 0.2,
        "classes": [
            {"label": "normal", "fraction": 0.5, "champion_fraction": 0.7, "abs_diff": 0.2},
            {"label": "benign", "fraction": 0.5, "champion_fraction": 0.3, "abs_diff": 0.2},
            {"label": "malignant", "fraction": 0.0, "champion_fraction": 0.0, "abs_diff": 0.0},
        ],
    }
    html = render_report(_validation(drift))
    assert "Class drift vs champion &#x27;m&#x27; version 3 &lt;run&gt;: total variation 0.2" in html
    assert html.count('<span class="bad">0.2</span>') == 2 and '<span class="good">0</span>' in html


def test_skipped_drift_says_why():
    html = render_report(_validation({"status": "skipped", "reason": "no champion version of 'm' yet"}))
    assert "Class drift vs champion: skipped &mdash; no champion version of &#x27;m&#x27; yet" in html
