"""Builders of the project's bundled assets, apart from the training harness: the offline stand-in SAM
(`pretrain_standin`, from the synthetic scenes of `standin_scenes`) and the embedded nuclei dataset
(`make_embedded_dataset`). Run from the repository root, e.g. `python -m tools.pretrain_standin`."""
