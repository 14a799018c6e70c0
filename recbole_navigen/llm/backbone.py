"""The causal-LM backbone of NaviGen: a tiny random Llama for tests and quick CPU runs, loading any backbone
with a chat-ready tokenizer, adding the item-code tokens to its vocabulary, and choosing what is trained
(stage 1: only the new token rows; stage 2: LoRA adapters plus the new token rows)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from tokenizers import AddedToken

from recbole_navigen.llm.pretrained import resolve_pretrained, save_pretrained_atomic

TINY = "tiny"
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Set on a weight whose gradient is row-masked: the bool mask of the rows that may change.
_ROW_MASK = "navigen_row_mask"


# ----- building and loading -----


def build_tiny_backbone(texts: list[str], folder: Path, settings: dict) -> Path:
    """Write a random Llama and a byte-level BPE tokenizer trained on `texts` to `folder`; returns `folder`.

    `settings`: vocab_size, hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
    intermediate_size, max_position_embeddings, tie_word_embeddings, seed. Same texts and settings, same files.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=settings["vocab_size"],
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable, seen in `texts` or not
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|pad|>", bos_token=None
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings["hidden_size"],
        num_hidden_layers=settings["num_hidden_layers"],
        num_attention_heads=settings["num_attention_heads"],
        num_key_value_heads=settings["num_key_value_heads"],
        intermediate_size=settings["intermediate_size"],
        max_position_embeddings=settings["max_position_embeddings"],
        tie_word_embeddings=settings["tie_word_embeddings"],
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(settings["seed"])
    model = LlamaForCausalLM(config)
    folder = Path(folder)
    save_pretrained_atomic(model, tokenizer, folder)
    return folder


def tiny_folder(cache_dir: str | Path, texts: list[str], settings: dict) -> Path:
    """Where the tiny backbone of these texts and settings is cached: the key changes with either."""
    key = json.dumps({"texts": list(texts), "settings": settings}, sort_keys=True, default=str)
    return Path(cache_dir) / f"tiny-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:12]}"


def load_backbone(llm_path: str, cache_dir: str | Path, texts: list[str], tiny_settings: dict):
    """(model, tokenizer) in float32 on CPU; the tokenizer pads on the left and has a chat template.

    `llm_path` "tiny" builds (once, cached under `cache_dir`) a random model whose tokenizer is trained on
    `texts` with `tiny_settings`; anything else is a folder, hub name or alias of `resolve_pretrained`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if llm_path == TINY:
        folder = tiny_folder(cache_dir, texts, tiny_settings)
        if not (folder / "config.json").is_file():
            build_tiny_backbone(texts, folder, tiny_settings)
        resolved = str(folder)
    else:
        resolved = resolve_pretrained(llm_path, cache_dir)
        _check_local_path(resolved)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch.float32)
    except OSError as error:
        raise OSError(
            f"cannot load the backbone {llm_path!r} from {resolved!r}: not a model folder and not in the "
            f"local Hugging Face cache ({error})"
        ) from error
    if not tokenizer.chat_template:
        raise ValueError(f"the backbone {llm_path!r} ({resolved}) has no chat template: use an instruct/chat model")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the backbone {llm_path!r} ({resolved}) has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # batched generation continues every prompt right after its last token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _check_local_path(name_or_path: str) -> None:
    """A clear error for a path that is meant to be local but is missing (the hub would call it a bad repo id)."""
    if Path(name_or_path).exists():
        return
    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise FileNotFoundError(f"no model folder at {name_or_path!r} (and it is not a known alias or hub name)")


# ----- vocabulary -----


def extend_vocabulary(model, tokenizer, tokens: list[str]) -> torch.Tensor:
    """Add `tokens` to the tokenizer and the model; returns the LongTensor of all their ids (new or not).

    Each new row of the input embedding (and of an untied output head) starts as the mean of the old rows:
    simple, and it keeps the new tokens' logits ordinary at first, neither dominating nor never sampled.
    Rows of tokens already present are left as they are, so a second call changes nothing.
    """
    vocab = tokenizer.get_vocab()
    # normalized=False: a normalizer (lowercasing, space marking) must not change what is matched.
    missing = [AddedToken(token, normalized=False, special=False) for token in tokens if token not in vocab]
    tokenizer.add_tokens(missing)
    ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(tokens)), dtype=torch.long)
    for token, token_id in zip(tokens, ids.tolist()):
        encoded = tokenizer.encode(token, add_special_tokens=False)
        if encoded != [token_id]:
            raise ValueError(f"{token!r} encodes to {encoded}, not to its single id {token_id}")

    old_rows = model.get_input_embeddings().weight.shape[0]
    # Some models carry spare rows beyond the tokenizer (padded vocabularies): never shrink those away.
    rows = max(len(tokenizer), old_rows)
    if rows != old_rows:
        # mean_resizing=False: rows are set here, without the sampling (and RNG use) of the library's init.
        model.resize_token_embeddings(rows, mean_resizing=False)
    fresh = torch.zeros(rows, dtype=torch.bool)
    fresh[old_rows:] = True
    fresh[[token_id for token, token_id in zip(tokens, ids.tolist()) if token not in vocab]] = True
    if fresh.any():
        _fill_with_mean(model.get_input_embeddings().weight, fresh, old_rows)
        head = model.get_output_embeddings()
        if head is not None and not _is_tied(model):
            _fill_with_mean(head.weight, fresh, old_rows)
    return ids


def _fill_with_mean(weight: torch.Tensor, fresh: torch.Tensor, old_rows: int) -> None:
    """Set the `fresh` rows of `weight` to the mean of its other rows among the first `old_rows`."""
    with torch.no_grad():
        reference = weight[:old_rows][~fresh[:old_rows]]
        weight[fresh] = reference.mean(dim=0).to(weight.dtype)


def _is_tied(model) -> bool:
    """Whether the output head shares its weight with the input embedding."""
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


# ----- what is trained -----


def train_new_rows_only(model, new_ids: torch.Tensor, train_head: str) -> list:
    """Stage 1: freeze everything but the embedding rows of `new_ids` and the output head; returns hook handles.

    `train_head` "full" trains the whole head; a head tied to the embedding is first untied into its own
    copy (and the config says so, so that resizing or reloading does not tie it back), because training it
    in full would otherwise move the old embedding rows. "rows" trains only the head rows of `new_ids`
    (a tied head then simply shares the embedding's masked weight).

    Old rows get a zero gradient, which keeps them bit-identical under SGD and Adam (their moments stay 0),
    but not under decoupled weight decay (AdamW shrinks every row): the optimizer must use weight_decay 0
    for the masked weights; `parameter_groups` does that.
    """
    if train_head not in ("full", "rows"):
        raise ValueError(f"train_head must be 'full' or 'rows', got {train_head!r}")
    model.requires_grad_(False)
    if train_head == "full" and _is_tied(model):
        _untie_head(model)
    handles = [_mask_rows(model.get_input_embeddings().weight, new_ids)]
    head = model.get_output_embeddings()
    if head is not None and not _is_tied(model):
        if train_head == "full":
            head.weight.requires_grad_(True)
        else:
            handles.append(_mask_rows(head.weight, new_ids))
    return handles


def apply_lora(model, new_ids: torch.Tensor | None, r: int, alpha: int, dropout: float, target_modules: list[str]):
    """Stage 2: wrap `model` with LoRA adapters on `target_modules`, and keep the `new_ids` rows trainable.

    peft freezes every base weight, the embedding and head included, so newly added tokens would keep their
    initial (mean) rows forever: the embedding and an untied head are made trainable again, with the same
    row mask as stage 1 (so use `parameter_groups` for weight decay). `new_ids=None` trains the adapters
    only (the RL stage). Returns the PeftModel.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules)
    )
    peft_model = get_peft_model(model, config)
    if new_ids is None:
        return peft_model
    _mask_rows(peft_model.get_input_embeddings().weight, new_ids)
    head = peft_model.get_output_embeddings()
    if head is not None and not _is_tied(peft_model):
        _mask_rows(head.weight, new_ids)
    return peft_model


def _mask_rows(weight: torch.nn.Parameter, keep_ids: torch.Tensor):
    """Make `weight` trainable with a gradient hook that zeroes every row not in `keep_ids`; returns the handle."""
    keep = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
    keep[keep_ids.to(weight.device)] = True
    setattr(weight, _ROW_MASK, keep)
    weight.requires_grad_(True)
    return weight.register_hook(lambda grad: grad.masked_fill(~keep.unsqueeze(-1), 0.0))


def load_trained_weights(model, weights: dict[str, torch.Tensor], new_ids: torch.Tensor) -> None:
    """Load weights an earlier stage trained (embedding rows, head) into `model`, untying its head first
    when that stage trained the head on its own; any name the model lacks is an error. A weight saved as
    only its `new_ids` rows (see `pack_masked_rows`) fills those rows and keeps the others."""
    if "lm_head.weight" in weights and _is_tied(model):
        _untie_head(model)
    parameters = dict(model.named_parameters())
    rows = torch.zeros(max(p.shape[0] for p in parameters.values()), dtype=torch.bool)
    rows[new_ids] = True
    weights = {name: _unpack(parameters[name], rows[: parameters[name].shape[0]], value)
               if name in parameters else value for name, value in weights.items()}
    unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
    if unexpected:
        raise KeyError(f"weights for parameters the backbone does not have: {unexpected[:5]}")


def pack_masked_rows(parameters: dict[str, torch.nn.Parameter], state: dict[str, torch.Tensor]) -> None:
    """In `state`, keep only the trainable rows of each row-masked weight (in row order): a checkpoint then
    holds the new tokens' rows, not a copy of the whole vocabulary's embedding."""
    for name, parameter in parameters.items():
        mask = getattr(parameter, _ROW_MASK, None)
        if mask is not None and name in state and state[name].shape[0] == mask.shape[0]:
            state[name] = state[name][mask.to(state[name].device)]


def unpack_masked_rows(parameters: dict[str, torch.nn.Parameter], state: dict[str, torch.Tensor]) -> None:
    """Undo `pack_masked_rows` in `state`: each packed weight becomes the parameter's current value with its
    trainable rows replaced."""
    for name, parameter in parameters.items():
        mask = getattr(parameter, _ROW_MASK, None)
        if mask is not None and name in state:
            state[name] = _unpack(parameter, mask, state[name])


def _unpack(parameter: torch.Tensor, rows: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` if it is a whole weight; if it holds only the `rows` rows, the parameter with those replaced."""
    if value.shape == parameter.shape:
        return value
    if value.shape[0] != int(rows.sum()) or value.shape[1:] != parameter.shape[1:]:
        raise ValueError(f"saved weight of shape {tuple(value.shape)} fits neither the parameter "
                         f"{tuple(parameter.shape)} nor its {int(rows.sum())} trainable rows")
    from recbole_navigen.distributed import whole

    full = whole(parameter.detach()).clone()  # an FSDP2 shard is gathered whole first
    full[rows.to(full.device)] = value.to(full.device, full.dtype)
    return full


def _untie_head(model) -> None:
    """Give the output head its own copy of the embedding weight, and record the untying in the config."""
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.config.tie_word_embeddings = False
    text_config = model.config.get_text_config()
    if text_config is not model.config:
        text_config.tie_word_embeddings = False


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """Optimizer groups of the trainable parameters: row-masked weights get weight_decay 0 (see above)."""
    trainable = [param for param in model.parameters() if param.requires_grad]
    masked = [param for param in trainable if hasattr(param, _ROW_MASK)]
    other = [param for param in trainable if not hasattr(param, _ROW_MASK)]
    return [group for group in ({"params": other, "weight_decay": weight_decay},
                                {"params": masked, "weight_decay": 0.0}) if group["params"]]


def trainable_summary(model) -> dict:
    """Trainable and total parameter counts and their share; a row-masked weight counts its trainable rows."""
    trainable = total = 0
    for param in model.parameters():  # shared (tied) weights are counted once
        total += param.numel()
        if param.requires_grad:
            mask = getattr(param, _ROW_MASK, None)
            trainable += param.numel() if mask is None else int(mask.sum()) * param[0].numel()
    return {"trainable": trainable, "total": total, "share": trainable / total if total else 0.0}
