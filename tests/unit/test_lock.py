"""The lock (requirements/*.txt, written by `make lock`) decides what is installed: the running
environment holds exactly its versions, the image's runtime lock agrees with the development
lock, and both still satisfy what pyproject.toml asks for (a dependency added without
re-locking fails here, not on the next machine)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DEV_LOCK = ROOT / "requirements" / "dev.txt"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
PROJECT = "customer-management-service"
# Installed by `python -m venv` itself, before the lock is applied.
VENV_SEED = {"pip"}

_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)"
    r"\s*(?:;(?P<marker>[^\\]+))?"
)


def locked(path: Path) -> dict[str, Version]:
    """Package -> pinned version, for the pins whose environment marker holds here."""
    pins: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line)
        if match is None:
            continue
        marker = match["marker"]
        if marker and not Marker(marker.strip()).evaluate():
            continue
        pins[canonicalize_name(match["name"])] = Version(match["version"])
    return pins


def test_every_pin_carries_hashes() -> None:
    for path in (DEV_LOCK, RUNTIME_LOCK):
        blocks = re.split(r"\n(?=[A-Za-z0-9])", path.read_text())
        unhashed = [b.split()[0] for b in blocks if b.strip() and "--hash=sha256:" not in b]
        assert unhashed == [], f"{path.name}: pins without hashes {unhashed}"


def test_the_environment_is_exactly_the_lock() -> None:
    pins = locked(DEV_LOCK)
    installed = {
        canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()
    }
    installed.pop(canonicalize_name(PROJECT))
    for seed in VENV_SEED:
        installed.pop(seed, None)
    wrong = {
        name: (str(installed.get(name)), str(version))
        for name, version in pins.items()
        if installed.get(name) != version
    }
    assert wrong == {}, f"installed != locked (installed, locked): {wrong}; run `make install`"
    unlocked = sorted(set(installed) - set(pins))
    assert unlocked == [], f"installed but not in the lock: {unlocked}"


def test_the_image_lock_agrees_with_the_development_lock() -> None:
    dev, runtime = locked(DEV_LOCK), locked(RUNTIME_LOCK)
    differ = {n: (str(v), str(dev.get(n))) for n, v in runtime.items() if dev.get(n) != v}
    assert differ == {}, f"runtime.txt and dev.txt pin different versions: {differ}"


def test_the_lock_satisfies_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {
        RUNTIME_LOCK: list(project["dependencies"]),
        DEV_LOCK: [r for extra in project["optional-dependencies"].values() for r in extra],
    }
    for path, requirements in wanted.items():
        pins = locked(path)
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate():
                continue
            version = pins.get(canonicalize_name(requirement.name))
            assert version is not None, f"{requirement.name} is not in {path.name}: `make lock`"
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{path.name} pins {requirement.name}=={version}, pyproject asks {text!r}: "
                "`make lock`"
            )
