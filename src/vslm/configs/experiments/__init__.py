"""Built-in experiments: `vslm experiment NAME` compares the variants of one config over seeds."""
