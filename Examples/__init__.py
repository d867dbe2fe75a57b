"""Examples: what the main job (``python -m PuzzleLib``) runs and what the README shows, each a module of its own: the
seed example and the running-statistics demonstration (`RunningStatistics`), the experiment of Ioffe & Szegedy 2015 on
scikit-learn's digits (`DigitsExperiment`), and the same network trained data-parallel over MPI ranks with synchronized
batch norm (`DataParallelDigits`)."""
