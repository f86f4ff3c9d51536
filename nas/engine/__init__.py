"""What every run shares: the backbone, task data (GLUE, planted, completions), the training loop and
evaluation, precision, data parallelism, checkpoints, budgets, outputs, logging, and the pipeline that runs a
method from start to end."""
