"""When and how much to prune, decided without a Trainer: schedules and the tolerance search."""
