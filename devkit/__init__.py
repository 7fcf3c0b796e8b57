"""conch's developer kit: test harness, robustness and simulation tooling; not part of the installed product."""
