"""The README's settings table documents every setting, and nothing that is not one."""

import re
from pathlib import Path

from ptserve.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_settings_table_lists_every_setting_exactly() -> None:
    section = README.read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))
    assert documented == set(Settings.model_fields)
