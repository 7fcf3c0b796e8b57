"""conch's developer kit: test harness, robustness/linearizability tooling; not part of the
installed product."""
