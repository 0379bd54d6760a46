"""Training and inference around the models: the training loop, COCO evaluation, checkpoints,
distributed training, shipping, the tiny backbones' pretraining, DN-DETR's instability score, and
`predict`."""
