"""What ``pip install -e '.[test]'`` brings in (issue 15: no vulnerable pins): the installed dependency
closure of attnguard holds no torchattacks and nothing that holds ``requests`` below 2.32.

torchattacks 3.5.1 requires ``requests~=2.25.1``; had it stayed a dependency, installing attnguard would
downgrade requests to a release with published advisories. The test reads the metadata of the
distributions installed here, so it checks the resolution pip made, not only pyproject.toml's text
(tests/attacks/test_autoattack.py checks that). The tests' cross-check installs torchattacks with
``--no-deps`` (.ci/run): outside the closure.
"""

from importlib import metadata

import pytest

requirements = pytest.importorskip("packaging.requirements")
from packaging.utils import canonicalize_name  # noqa: E402


def dependency_closure(root: str = "attnguard", extras=("test",)):
    """``(names, [(required_by, Requirement)])`` over the installed distributions reachable from ``root``
    with ``extras``; markers are evaluated for this interpreter (other packages' extras are off)."""
    names, reqs, todo = set(), [], [(root, tuple(extras))]
    while todo:
        name, extra = todo.pop()
        key = canonicalize_name(name)
        if key in names:
            continue
        names.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:  # an optional dependency that is not installed
            continue
        for text in dist.requires or []:
            req = requirements.Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extra or ("",))):
                continue
            reqs.append((key, req))
            todo.append((req.name, tuple(req.extras)))
    return names, reqs


def test_no_dependency_pins_requests_below_2_32():
    names, reqs = dependency_closure()
    assert {"torch", "pyautoattack", "pytest"} <= names  # the walk reached the runtime and the test extra
    assert "torchattacks" not in names
    on_requests = [(who, str(r)) for who, r in reqs if canonicalize_name(r.name) == "requests"]
    for who, req in on_requests:
        assert requirements.Requirement(req).specifier.contains("2.32.4"), f"{who} requires {req}"
    if "requests" in names:  # installed through some dependency: a current release
        from packaging.version import Version

        assert Version(metadata.version("requests")) >= Version("2.32")


def test_the_walk_sees_torchattacks_pin():
    # the check above can fail: from torchattacks (installed here --no-deps for the cross-checks) the walk
    # finds its requests~=2.25.1, which excludes 2.32
    pytest.importorskip("torchattacks")
    _, reqs = dependency_closure("torchattacks", extras=())
    pins = [r for _, r in reqs if canonicalize_name(r.name) == "requests"]
    assert pins and not pins[0].specifier.contains("2.32.4")
