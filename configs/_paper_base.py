"""Fields shared by the paper_* configs (not a config itself: no get_config).

The paper's runs: pretraining on Conceptual Captions (``cc3m``), then fine-tuning on Flickr30K
(``flickr30k``) or COCO (``coco``, Karpathy split) with ``--config.model.init_from=<the cc3m run>``;
ResNet-50 image tower (ImageNet weights from your own checkpoint: ``--config.model.vision.pretrained=DIR``,
a Hugging Face microsoft/resnet-50 safetensors dir or a torchvision .pth; none can be downloaded here) at
224 px, MiniLM text tower. The argument names the dataset, with ``_tiny`` for the variant the tests run
on fixture folders (tiny random towers, a few steps): ``cc3m``, ``flickr30k``, ``coco``, ``cc3m_tiny``,
``flickr30k_tiny`` (also ``tiny``), ``coco_tiny``.
"""
import ml_collections

import _shapes_base

# arg -> (builder name, train split, validation split, test split)
DATASETS = {
    "cc3m": ("cc3m", "train", "validation", "validation"),
    "flickr30k": ("flickr30k", "train", "validation", "test"),
    "coco": ("coco_karpathy", "train", "validation", "test"),
}
# steps at batch 256: CC3M ~ 10 epochs of the ~2.5M images img2dataset typically gets; Flickr30K ~ 35
# epochs of 29k images; COCO ~ 10 epochs of 113k images
STEPS = {"cc3m": 100_000, "flickr30k": 4_000, "coco": 4_500}


def parse(name: str, arg) -> tuple[str, bool]:
    arg = arg or ""
    if arg == "tiny":  # the variant every config offers
        arg = "flickr30k_tiny"
    dataset, tiny = (arg[: -len("_tiny")], True) if arg.endswith("_tiny") else (arg, False)
    if dataset not in DATASETS:
        raise ValueError(f"configs/{name} takes one of {sorted(DATASETS)} (optionally with _tiny), got {arg!r}")
    return dataset, tiny


def base(task: str, dataset: str, tiny: bool) -> ml_collections.ConfigDict:
    c = _shapes_base.base(task, tiny)
    name, train, val, test = DATASETS[dataset]
    c.data.name, c.data.train_split, c.data.val_split, c.data.test_split = name, train, val, test
    c.data.manual_dir = ""  # the folder in the dataset's published layout (README, "Real datasets")
    c.data.tokenizer = "minilm"
    c.data.max_len = 32
    c.data.image_size = 32 if tiny else 224  # every image resized + centre-cropped (host side)
    c.model.vision.name = "tiny_cnn" if tiny else "resnet50"
    c.model.vision.image_size = c.data.image_size
    c.model.vision.pretrained = ""  # full runs: pass your ResNet-50 ImageNet checkpoint
    c.model.init_from = ""  # fine-tuning: a finished run of the same task and architecture (the cc3m run)
    c.optim.lr = 1e-3 if tiny else (1e-4 if dataset == "cc3m" else 2e-5)
    c.optim.warmup_steps = 1 if tiny else 2_000 if dataset == "cc3m" else 200
    c.train.batch_size = 8 if tiny else 256
    c.train.steps = 3 if tiny else STEPS[dataset]
    c.train.checkpoint_every = 3 if tiny else 2_000
    c.eval.every = 0 if tiny else 2_000
    c.eval.queries_per_image = 0 if tiny else 5
    return c


def text_tower(c: ml_collections.ConfigDict, tiny: bool) -> None:
    if not tiny:
        c.model.text.pretrained = "minilm"
        c.model.text.max_len = 32
