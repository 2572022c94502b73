"""The worker's view of the config file: re-read on change, throttled, never lost to a bad edit."""

import os

import pytest

from queuectl import config as config_mod
from queuectl.config import ConfigWatcher, Home
from queuectl.errors import StorageError


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_change_is_seen_once_the_check_interval_has_passed(tmp_path):
    home = Home(str(tmp_path))
    clock = FakeClock()
    watcher = ConfigWatcher(home, clock=clock)
    assert watcher.current()["max_retries"] == 3  # the default, with no file yet
    config_mod.set_value(home, "max-retries", "7")
    clock.now += ConfigWatcher.CHECK_INTERVAL / 2
    assert watcher.current()["max_retries"] == 3  # not looked at again yet
    clock.now += ConfigWatcher.CHECK_INTERVAL
    assert watcher.current()["max_retries"] == 7


def test_a_broken_edit_keeps_the_last_good_values(tmp_path, caplog):
    home = Home(str(tmp_path))
    clock = FakeClock()
    config_mod.set_value(home, "backoff_base", "3")
    watcher = ConfigWatcher(home, clock=clock)
    assert watcher.current()["backoff_base"] == 3
    with open(home.config_path, "w") as handle:
        handle.write("{not json")
    clock.now += ConfigWatcher.CHECK_INTERVAL * 2
    assert watcher.current()["backoff_base"] == 3
    clock.now += ConfigWatcher.CHECK_INTERVAL * 2
    assert watcher.current()["backoff_base"] == 3
    # Said once in the worker's log, not at every check.
    warnings = [r.getMessage() for r in caplog.records if r.name == "queuectl.config"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("Ignoring the config file, keeping the last good settings: cannot read")
    with open(home.config_path, "w") as handle:  # the user mends it
        handle.write('{"backoff_base": 5}')
    clock.now += ConfigWatcher.CHECK_INTERVAL * 2
    assert watcher.current()["backoff_base"] == 5


def test_a_deleted_file_means_the_defaults_again(tmp_path):
    home = Home(str(tmp_path))
    clock = FakeClock()
    config_mod.set_value(home, "max_retries", "9")
    watcher = ConfigWatcher(home, clock=clock)
    assert watcher.current()["max_retries"] == 9
    (tmp_path / "queuectl.config.json").unlink()
    clock.now += ConfigWatcher.CHECK_INTERVAL * 2
    assert watcher.current()["max_retries"] == 3


def test_a_file_that_cannot_even_be_looked_at_keeps_the_last_good_values(tmp_path, caplog):
    # A symlink loop fails os.stat itself (ELOOP), not just the JSON parse.
    home = Home(str(tmp_path))
    clock = FakeClock()
    config_mod.set_value(home, "max_retries", "5")
    watcher = ConfigWatcher(home, clock=clock)
    assert watcher.current()["max_retries"] == 5
    os.remove(home.config_path)
    os.symlink(home.config_path, home.config_path)
    for _ in range(3):
        clock.now += ConfigWatcher.CHECK_INTERVAL * 2
        assert watcher.current()["max_retries"] == 5
    warnings = [r.getMessage() for r in caplog.records if r.name == "queuectl.config"]
    assert len(warnings) == 1 and "Too many levels of symbolic links" in warnings[0], warnings
    os.remove(home.config_path)
    config_mod.set_value(home, "max_retries", "6")
    clock.now += ConfigWatcher.CHECK_INTERVAL * 2
    assert watcher.current()["max_retries"] == 6


def test_a_first_read_that_fails_is_one_clear_error(tmp_path):
    home = Home(str(tmp_path))
    with open(home.config_path, "w") as handle:
        handle.write("[" * 100_000 + "]" * 100_000)
    with pytest.raises(StorageError, match="nested too deeply"):
        ConfigWatcher(home).current()
    os.remove(home.config_path)
    os.symlink(home.config_path, home.config_path)
    with pytest.raises(StorageError, match="cannot read .*symbolic links"):
        ConfigWatcher(home).current()


def test_a_file_saved_with_a_byte_order_mark_is_read(tmp_path):
    # Notepad and PowerShell's Out-File write UTF-8 with a BOM.
    home = Home(str(tmp_path))
    with open(home.config_path, "w", encoding="utf-8-sig") as handle:
        handle.write('{"max_retries": 7}')
    assert config_mod.load_config(home)["max_retries"] == 7
    config_mod.set_value(home, "backoff_base", "3")
    assert config_mod.load_config(home)["max_retries"] == 7
    assert config_mod.load_config(home)["backoff_base"] == 3
