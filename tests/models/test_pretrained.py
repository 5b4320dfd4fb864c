"""Our towers against PyTorch references: transformers' BertModel on the real all-MiniLM-L6-v2 weights,
ResNetModel and CLIPModel with random weights saved as safetensors / torch files, and the real
EfficientNet-Lite0 ImageNet classifier on scikit-image photos. Needs the reference extras that
launch/test.sh installs (torch CPU build, scikit-image, the weight packages; requirements/reference*.txt)."""
import os

import jax
import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx

from fastslow_jax.models import backbones, vision, weights
from fastslow_jax.models.fast import FastModel
from fastslow_jax.models.text import build_text_tower

SENTENCES = ["A cat sitting on a sofa.", "A kitten resting on a couch.",
             "The rocket lifted off from the launch pad at dawn, trailing smoke.", "Two dogs play in the snow."]


def _bert(pretrained="minilm", vocab_size=30522):
    cfg = ml_collections.ConfigDict(dict(width=8, depth=1, num_heads=1, mlp_dim=8, max_len=8, dropout=0.0,
                                         pretrained=pretrained))
    tower = build_text_tower(cfg, vocab_size=vocab_size, rngs=nnx.Rngs(0))
    weights.load_text(tower, "bert", pretrained)
    return tower


def test_minilm_matches_transformers_bert_and_its_published_similarity():
    from transformers import AutoTokenizer, BertModel

    path = weights.resolve("minilm")
    tower = _bert()
    batch = AutoTokenizer.from_pretrained(path)(SENTENCES, padding=True, return_tensors="np")
    ours = np.asarray(tower(batch["input_ids"]))
    ref = BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(batch["input_ids"]),
                   attention_mask=torch.tensor(batch["attention_mask"])).last_hidden_state.numpy()
    real = batch["attention_mask"].astype(bool)
    diff = np.abs(ours - want).max()  # every position, padding included
    print(f"MiniLM max abs diff vs BertModel (all positions): {diff:.2e}; max |ref| {np.abs(want).max():.2f}")
    assert diff <= 1e-4
    pooled = (ours * real[..., None]).sum(1) / real.sum(1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    cos = pooled @ pooled.T
    print(f"MiniLM cosine cat/kitten {cos[0, 1]:.4f}, cat/rocket {cos[0, 2]:.4f}")
    assert abs(cos[0, 1] - 0.76) < 0.01 and cos[0, 2] < 0.2


def test_bert_base_layout_with_prefix_and_heads_loads_and_partial_checkpoints_fail_clearly(tmp_path):
    """bert-base style files carry a ``bert.`` prefix, a pooler and pre-training heads (ignored); a
    checkpoint missing a layer or with a wrong shape is refused with one message listing both."""
    from safetensors.numpy import save_file
    from transformers import BertConfig, BertForPreTraining

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=20)
    torch.manual_seed(0)
    ref = BertForPreTraining(cfg).eval()
    sd = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    assert any(k.startswith("bert.") for k in sd) and any(k.startswith("cls.") for k in sd)
    d = tmp_path / "bert"
    d.mkdir()
    save_file(sd, str(d / "model.safetensors"))
    cfg.to_json_file(str(d / "config.json"))
    tower = _bert(str(d), vocab_size=50)
    tokens = np.array([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0]])
    with torch.no_grad():
        want = ref.bert(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(tokens != 0)).last_hidden_state
    real = tokens != 0
    assert np.abs(np.asarray(tower(tokens)) - want.numpy())[real].max() < 1e-5

    broken = {k: v for k, v in sd.items() if not k.startswith("bert.encoder.layer.1.output.dense")}
    broken["bert.embeddings.word_embeddings.weight"] = np.zeros((50, 8), np.float32)
    broken["bert.extra.weight"] = np.zeros(3, np.float32)
    save_file(broken, str(d / "model.safetensors"))
    with pytest.raises(weights.CheckpointError) as e:
        weights.load_text(tower, "bert", str(d))
    msg = str(e.value)
    assert "2 missing [layers.1.mlp.output.bias, layers.1.mlp.output.kernel]" in msg
    assert "1 unexpected [bert.extra.weight]" in msg
    assert "1 mis-shaped [bert.embeddings.word_embeddings.weight (50, 8) vs embeddings.word.embedding (50, 16)]" in msg


def _randomise_batchnorm(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.2 * torch.randn(n, generator=g)
            m.running_mean.data = 0.2 * torch.randn(n, generator=g)
            m.running_var.data = 0.5 + torch.rand(n, generator=g)


def _tv_name(k):
    """Hugging Face ResNet key -> torchvision resnet50 key (written out independently of our converter)."""
    k = k.replace("embedder.embedder.convolution", "conv1").replace("embedder.embedder.normalization", "bn1")
    parts = k.split(".")
    if parts[0] == "encoder":
        s, l = int(parts[2]), parts[4]
        rest = parts[5:]
        if rest[0] == "shortcut":
            mid = "downsample.0" if rest[1] == "convolution" else "downsample.1"
        else:
            idx = int(rest[1]) + 1
            mid = f"conv{idx}" if rest[2] == "convolution" else f"bn{idx}"
        k = f"layer{s + 1}.{l}.{mid}.{parts[-1]}"
    return k


def test_resnet50_matches_transformers_resnet_in_hf_and_torchvision_layouts(tmp_path):
    """The real ResNet-50 structure at 224 px, random weights (no ResNet weights can be had offline)."""
    from safetensors.numpy import save_file
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    ref = ResNetModel(ResNetConfig()).eval()  # microsoft/resnet-50's architecture
    _randomise_batchnorm(ref)
    sd = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    torch.save({_tv_name(k): torch.from_numpy(v) for k, v in sd.items()} | {"fc.weight": torch.zeros(1000, 2048)},
               str(tmp_path / "resnet50_tv.pth"))
    images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    spec = vision.PREPROCESSING["resnet50"]
    pixels = (images / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    with torch.no_grad():
        hs = ref(torch.tensor(pixels.transpose(0, 3, 1, 2), dtype=torch.float32),
                 output_hidden_states=True).hidden_states
    net = backbones.build_backbone(ml_collections.ConfigDict(dict(name="resnet50")), rngs=nnx.Rngs(0))
    forward = jax.jit(lambda m, x: m(x))
    for f in ("model.safetensors", "resnet50_tv.pth"):
        weights.load_vision(net, "resnet50", str(tmp_path / f))
        feats = forward(net, images)
        for level, h in zip(("C3", "C4", "C5"), hs[2:]):
            want = h.numpy().transpose(0, 2, 3, 1)
            rel = np.abs(np.asarray(feats[level]) - want).max() / np.abs(want).max()
            print(f"ResNet-50 ({f}) {level}: max abs diff / max |ref| = {rel:.2e}")
            assert rel <= 1e-4


IMAGENET_ESPRESSO, IMAGENET_CATS = 967, range(281, 286)  # tabby, tiger, Persian, Siamese, Egyptian cat


def test_imagenet_indices_from_the_real_label_list():
    from tensorflow_datasets.datasets.siscore.labels import IMAGENET_LABELS_LIST as names
    import tensorflow_datasets.datasets.imagenet2012 as inet

    wnids = open(os.path.join(os.path.dirname(inet.__file__), "labels.txt")).read().split()
    assert names[IMAGENET_ESPRESSO] == "espresso" and wnids[IMAGENET_ESPRESSO] == "n07920052"
    assert [wnids[i] for i in IMAGENET_CATS] == ["n02123045", "n02123159", "n02123394", "n02123597", "n02124075"]
    assert all("cat" in names[i] for i in IMAGENET_CATS)


def test_efficientnet_lite0_classifies_coffee_and_chelsea():
    import skimage.data

    cfg = ml_collections.ConfigDict(dict(name="efficientnet_lite0"))
    net = backbones.build_backbone(cfg, rngs=nnx.Rngs(0))
    weights.load_vision(net, "efficientnet_lite0", "efficientnet-lite0")
    spec = vision.preprocessing(cfg)
    assert (spec.resize, spec.crop) == (256, 224)
    images = np.stack([vision.preprocess_image(skimage.data.coffee(), spec),
                       vision.preprocess_image(skimage.data.chelsea(), spec)])
    logits, feats = jax.jit(lambda m, x: (m.classify(x), m(x)))(net, images)
    probs = np.asarray(jax.nn.softmax(logits))
    top = probs.argmax(1)
    print(f"EfficientNet-Lite0: coffee.png top-1 {top[0]} p={probs[0, top[0]]:.3f}; "
          f"chelsea.png top-1 {top[1]} p={probs[1, top[1]]:.3f}")
    assert top[0] == IMAGENET_ESPRESSO and probs[0, top[0]] > 0.8
    assert top[1] in IMAGENET_CATS
    assert {k: v.shape[1:] for k, v in feats.items()} == {"C3": (28, 28, 40), "C4": (14, 14, 112), "C5": (7, 7, 1280)}
    assert net.channels == {"C3": 40, "C4": 112, "C5": 1280}


def test_efficientnet_lite_variants_fit_their_packaged_weights():
    """Lite1 and Lite2 (deeper and, for Lite2, wider) build exactly the shapes their checkpoints hold."""
    for i in (1, 2):
        cfg = ml_collections.ConfigDict(dict(name=f"efficientnet_lite{i}"))
        net = nnx.eval_shape(lambda: backbones.build_backbone(cfg, rngs=nnx.Rngs(0)))
        ckpt = weights.read_checkpoint(weights.resolve(f"efficientnet-lite{i}"))
        entries, unexpected = weights.efficientnet_entries(ckpt)
        targets = weights.variables(net)
        assert not unexpected and {e.path for e in entries} == set(targets)
        assert all(tuple(e.value.shape) == tuple(targets[e.path].shape) for e in entries)


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    """A small random CLIPModel saved in the Hugging Face layout: (reference, checkpoint dir)."""
    tmp_path = tmp_path_factory.mktemp("clip_ckpt")
    from safetensors.numpy import save_file
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=98),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=24)
    torch.manual_seed(0)
    ref = CLIPModel(cfg).eval()
    with torch.no_grad():
        ref.logit_scale.fill_(3.0)
    d = tmp_path / "clip"
    d.mkdir()
    save_file({k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}, str(d / "model.safetensors"))
    cfg.to_json_file(str(d / "config.json"))
    return ref, str(d)


def test_clip_towers_match_transformers_clip_and_initialise_fast(small_clip):
    ref, path = small_clip
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    tokens = np.array([[5, 17, 40, 98, 0, 0], [5, 98, 0, 0, 0, 0], [5, 6, 7, 8, 9, 98]])
    spec = vision.PREPROCESSING["clip_vit"]
    pixels = torch.tensor(((images / 255.0 - spec.mean) / spec.std).transpose(0, 3, 1, 2), dtype=torch.float32)
    with torch.no_grad():
        want_img = ref.get_image_features(pixel_values=pixels)
        want_txt = ref.get_text_features(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(tokens != 0))
        want_tok = ref.vision_model(pixel_values=pixels).last_hidden_state
        want_img = getattr(want_img, "pooler_output", want_img).numpy()
        want_txt = getattr(want_txt, "pooler_output", want_txt).numpy()

    mcfg = ml_collections.ConfigDict(dict(
        dtype="float32", embed_dim=24, temperature=0.07,
        vision=dict(name="clip_vit", pretrained=path),
        text=dict(name="clip", pretrained=path, width=1, depth=1, num_heads=1, mlp_dim=1, max_len=1, dropout=0.0)))
    model = FastModel(mcfg, vocab_size=99, rngs=nnx.Rngs(0))
    done = weights.load_pretrained(model, mcfg)
    assert done[-1] == "logit_scale <- logit_scale" and float(model.logit_scale[...]) == 3.0

    tok = np.asarray(model.vision.tokens(images))
    rel_tok = np.abs(tok - want_tok.numpy()).max() / np.abs(want_tok.numpy()).max()
    img = np.asarray(model.encode_image(images))
    txt = np.asarray(model.encode_text(tokens))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    rel_img = np.abs(img - unit(want_img)).max() / np.abs(unit(want_img)).max()
    rel_txt = np.abs(txt - unit(want_txt)).max() / np.abs(unit(want_txt)).max()
    print(f"CLIP: vision tokens {rel_tok:.2e}, image embeddings {rel_img:.2e}, text embeddings {rel_txt:.2e} "
          f"(max abs diff / max |ref|)")
    assert max(rel_tok, rel_img, rel_txt) <= 1e-4
    assert model.vision(images)["C5"].shape == (3, 4, 4, 48)


def test_clip_checkpoint_into_the_wrong_tower_fails_clearly(small_clip):
    _, path = small_clip
    cfg = ml_collections.ConfigDict(dict(name="resnet50", base_width=8, stage_sizes=(1, 1, 1, 1)))
    net = nnx.eval_shape(lambda: backbones.build_backbone(cfg, rngs=nnx.Rngs(0)))  # shapes suffice: nothing is written
    with pytest.raises(weights.CheckpointError, match=r"clip does not fit ResNet: 85 missing \[stages.0.0.bn1.bias, .*\]; \d+ "
                                                      r"unexpected \[logit_scale, text_model.*; 0 mis-shaped$"):
        weights.load_vision(net, "resnet50", path)


def test_config_keys_initialise_the_fast_task(tmp_path):
    """model.text.pretrained (a BERT checkpoint dir) and model.vision.pretrained (a ResNet safetensors file)
    through the loop's initialize hook: the train state holds the checkpoints' tensors; the text
    architecture comes from the checkpoint's config.json. Small random checkpoints keep the jitted init
    cheap (the shapes tokenizer's ids fit the small BERT vocabulary)."""
    from safetensors.numpy import save_file
    from transformers import BertConfig, BertModel, ResNetConfig, ResNetModel
    from tests.conftest import tiny_config

    from fastslow_jax.train import loop

    torch.manual_seed(0)
    bcfg = BertConfig(vocab_size=200, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=48, max_position_embeddings=64)
    d = tmp_path / "bert"
    d.mkdir()
    bert = {k: v.numpy().copy() for k, v in BertModel(bcfg).state_dict().items()}
    save_file(bert, str(d / "model.safetensors"))
    bcfg.to_json_file(str(d / "config.json"))
    resnet = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1]))
    _randomise_batchnorm(resnet)
    lite = {k: v.numpy().copy() for k, v in resnet.state_dict().items()}
    save_file(lite, str(tmp_path / "resnet.safetensors"))
    cfg = tiny_config(overrides=[f"model.text.pretrained={d}", "model.vision.name=resnet50",
                                 f"model.vision.pretrained={tmp_path / 'resnet.safetensors'}",
                                 "model.vision.base_width=8", "model.vision.stage_sizes=1,1,1,1"])
    run = loop.setup(cfg, devices=jax.devices()[:1])
    state = run.warm_start(run.init_state())
    model = run.model(state)
    assert np.array_equal(np.asarray(model.text.embeddings.word.embedding[...]), bert["embeddings.word_embeddings.weight"])
    assert np.array_equal(np.asarray(model.text.layers[1].mlp.output.kernel[...]),
                          bert["encoder.layer.1.output.dense.weight"].T)
    assert np.array_equal(np.asarray(model.vision.stages[2][0].conv2.kernel[...]),
                          lite["encoder.stages.2.layers.0.layer.1.convolution.weight"].transpose(2, 3, 1, 0))
    assert np.array_equal(np.asarray(model.vision.stages[3][0].proj_bn.var[...]),
                          lite["encoder.stages.3.layers.0.shortcut.normalization.running_var"])
    assert model.text_proj.kernel.shape == (24, cfg.model.embed_dim) and model.image_proj.kernel.shape[0] == 256
    assert model.vision.mean == vision.IMAGENET_MEAN  # the checkpoint's normalisation, not the shapes config's
