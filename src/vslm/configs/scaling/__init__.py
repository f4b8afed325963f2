"""Built-in scaling studies: `vslm scaling NAME` trains a grid of sizes x token budgets and fits L(N, D)."""
