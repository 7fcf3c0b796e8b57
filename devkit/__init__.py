"""conch's developer kit: the test harness, the robustness and linearizability tooling and
the whole-member simulator. Not part of the installed product (not in the wheel)."""
