"""The data: the synthetic shapes set (`shapes`), COCO-format loading with padding masks (`dataset`),
and the class names of a model's predictions (`class_names`)."""
