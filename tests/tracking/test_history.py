"""The history keeps run-level facts beside its rounds and writes both."""

import json
from pathlib import Path

from fedloom.messages import RoundRecord
from fedloom.tracking import History


def _record(round: int, accuracy: float) -> RoundRecord:
    return RoundRecord(round, 3, 0.5, accuracy, 0.4, None, None, 0.1, {})


def test_info_survives_append_write_and_reload(tmp_path: Path) -> None:
    # Prepare
    history = History(info={"malicious_clients": ["3", "8"]})

    # Execute
    history = history.append(_record(1, 0.5)).append(_record(2, 0.7))
    history.write(tmp_path / "history.json")
    saved = json.loads((tmp_path / "history.json").read_text())
    again = History.from_records(saved["rounds"], saved["run"])

    # Assert
    assert saved["run"] == {"malicious_clients": ["3", "8"]}
    assert again == history
    assert again.column("accuracy") == [0.5, 0.7]


def test_a_history_without_info_writes_rounds_only() -> None:
    assert History().append(_record(1, 0.5)).to_dict().keys() == {"rounds"}
