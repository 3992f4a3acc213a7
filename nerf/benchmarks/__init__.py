"""The parts of `scripts/benchmark.py`: one module per subcommand, plus shared timing and model building."""
