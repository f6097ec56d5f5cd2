"""The pytest plugin as users meet it: loaded through its pytest11 entry point in
a fresh pytest run (pytester), in auto and strict asyncio modes."""

from __future__ import annotations

import textwrap

import pytest

USER_TESTS = textwrap.dedent(
    """
    import pytest

    from atriggers.testing import (
        assert_instance_failed,
        assert_instance_finished,
        assert_unresolved_tasks,
    )
    from atriggers.testing.pytest_plugin import FAILING, PASS_THRU

    CONFIG = {
        "t_pass": {"after": ["go"], "run": PASS_THRU},
        "t_fail": {"after": ["go"], "run": FAILING},
        "t_next": {"after": ["t_pass"], "run": PASS_THRU},
    }

    @pytest.mark.atriggers_configuration(CONFIG)
    {mark}
    async def test_workflow(atriggers_manager):
        await atriggers_manager.fire("go", {"x": 1})
        await atriggers_manager.join()
        await assert_instance_finished(atriggers_manager, "t_pass#0",
                                       result={"kwargs": {"go": {"x": 1}}})
        await assert_instance_finished(atriggers_manager, "t_next#0")
        await assert_instance_failed(atriggers_manager, "t_fail#0", RuntimeError)
        await assert_unresolved_tasks(atriggers_manager, ["t_fail"])

    @pytest.mark.atriggers_configuration(CONFIG)
    {mark}
    async def test_wrong_expectation(atriggers_manager):
        await atriggers_manager.fire("go")
        await atriggers_manager.join()
        await assert_instance_finished(atriggers_manager, "t_fail#0")
    """
)


def run(pytester: pytest.Pytester, mode: str) -> pytest.RunResult:
    mark = "@pytest.mark.asyncio" if mode == "strict" else ""
    pytester.makeini(
        f"[pytest]\nasyncio_mode = {mode}\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\naddopts = --strict-markers\n"
    )
    pytester.makepyfile(test_user=USER_TESTS.replace("{mark}", mark))
    return pytester.runpytest("-p", "no:randomly", "-p", "no:cacheprovider")


@pytest.mark.parametrize("mode", ["auto", "strict"])
def test_fixtures_marker_and_helpers(pytester: pytest.Pytester, mode: str) -> None:
    result = run(pytester, mode)
    result.assert_outcomes(passed=1, failed=1)
    # The failure shows the instance's status, exception type and traceback, and
    # hides the helper's own frames.
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: expected instance 't_fail#0' to be finished, but it is failed",
            "*t_fail#0: failed",
            "*exception: builtins.RuntimeError",
            "*traceback:",
            "*Traceback (most recent call last):",
            "*RuntimeError: You weren't supposed to see that.",
            "*instances of session 'test-session':",
        ]
    )
    assert "def assert_instance_status" not in result.stdout.str()


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest("-p", "no:randomly", "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.atriggers_configuration(configuration):*"])


def test_marker_misuse_is_reported(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        test_bad=textwrap.dedent(
            """
            import pytest

            @pytest.mark.atriggers_configuration({}, {})
            async def test_it(atriggers_manager):
                pass

            @pytest.mark.atriggers_configuration({"t": {"after": "go", "run": "x"}})
            async def test_bad_config(atriggers_manager):
                pass
            """
        )
    )
    result = pytester.runpytest("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*takes one argument: the configuration dict*",
            "*ConfigurationError: invalid configuration: task 't', directive 'after'*",
        ]
    )


def test_the_documented_example_passes(pytester: pytest.Pytester) -> None:
    """docs/testing.md's example is a real test file: run it."""
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
    examples = re.findall(r"```python\n(.*?)```", docs.read_text(encoding="utf-8"), re.S)
    tests = [e for e in examples if "def test_" in e]
    assert tests
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\naddopts = --strict-markers\n"
    )
    pytester.makepyfile(**{f"test_documented_{n}": example for n, example in enumerate(tests)})
    expected = sum(example.count("\nasync def test_") + example.count("\ndef test_") for example in tests)
    pytester.runpytest("-p", "no:randomly", "-p", "no:cacheprovider").assert_outcomes(passed=expected)


def test_the_plugin_fixture_scopes_every_registry(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        """
        from atriggers import TriggerManager, register_manager
        from atriggers.runners import AsyncioRunner, register_runner, runners
        from atriggers.storage import MemoryStorage, register_storage, storages
        from atriggers.manager import managers
        from atriggers.tasks import registry

        def test_registers(atriggers_registries):
            register_runner(AsyncioRunner(), "leaky")
            register_storage("leaky", MemoryStorage.from_url)
            registry.register(lambda context: {}, "leaky.task")

            @register_manager
            class Leaky(TriggerManager):
                manager_name = "leaky"

        def test_nothing_leaked():
            assert "leaky" not in runners and "leaky" not in storages
            assert "leaky" not in managers and "leaky.task" not in registry
        """
    )
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=2)


def test_the_clock_and_sweeper_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        """
        import pytest
        from atriggers.testing import assert_instance_abandoned, assert_instance_finished
        from atriggers.testing.pytest_plugin import PASS_THRU

        @pytest.mark.atriggers_configuration({
            "t_day": {"after": ["a", "b"], "run": PASS_THRU, "within": 86400},
            "t_later": {"after": ["later"], "run": PASS_THRU},
        })
        async def test_a_day_passes_in_no_time(atriggers_manager, atriggers_clock, atriggers_sweeper):
            await atriggers_manager.fire("a")
            await atriggers_manager.fire("later", {"n": 1}, delay=3600)
            await atriggers_clock.advance(3600)
            await atriggers_manager.join()
            await assert_instance_finished(atriggers_manager, "t_later#0")
            await atriggers_clock.advance(86400)
            assert await atriggers_sweeper.run_once() == 1
            await assert_instance_abandoned(atriggers_manager, "t_day#0")

        async def test_without_the_clock_time_is_real(atriggers_storage):
            import time
            assert abs(atriggers_storage.clock.time() - time.time()) < 5
        """
    )
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=2)
