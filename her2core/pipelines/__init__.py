"""Jobs that chain the layers below: `batch` translates many slides and scores each against its
real HER2 (inference, then evaluation). Import submodules explicitly."""
