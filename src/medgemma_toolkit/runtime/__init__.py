"""Torch runtime helpers shared by the engines, training and MedSigLIP: device and dtype choice (`torch_setup`),
placement across GPUs and memory estimates (`placement`), out-of-memory handling (`memory`).

They sit below `backends` because `train` and `embed` use them without going through a backend.
"""
