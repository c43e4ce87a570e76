def pytest_terminal_summary(terminalreporter):
    """One line per end-to-end main_ppo run: exit code, wall time, peak memory, log."""
    from tests.e2e.test_main_ppo import RUNS

    if RUNS:
        terminalreporter.section("main_ppo end-to-end runs")
        for (case, extra), result in RUNS.items():
            terminalreporter.write_line(
                f"{case}{' ' + ' '.join(extra) if extra else ''}: exit {result.returncode}, {result.wall_s:.0f} s, "
                f"peak memory {result.peak_memory_gb:.1f} GB, log {result.log}"
            )
