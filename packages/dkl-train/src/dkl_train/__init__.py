"""dkl-train: what the DKL recipes share. Import the submodules (config, data, training, results, models)."""
