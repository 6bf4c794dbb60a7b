"""What every run needs beside the model and the method: config checks,
checkpoints, metrics, plots and evaluation."""
