"""Set prediction: the matching costs, the Hungarian matcher, and the losses (cross-entropy, focal,
varifocal, L1, GIoU) of the set criterion."""
