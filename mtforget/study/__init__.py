"""Study config, grid, runner and results store."""
