"""The Janus-Pro policy: transformers' ``JanusForConditionalGeneration`` as a raster-order image
generator (one VQ token per action), with the official CFG prompt pair, the frozen parts STAGE
freezes, and the raster decoding protocol ``ARSampler`` drives over transformers' static KV
cache."""
from __future__ import annotations

from typing import Hashable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from vargo.core.interfaces import Policy
from vargo.core.registry import POLICIES
from vargo.core.types import Conditions, LogprobSpec, PolicyEval, Rollout

from ...modules.conv_layout import decode_in_chunks
from ...modules.onednn_linear import onednn_linears_option
from ...modules.raster import register_raster_action_axis
from ...modules.categorical import logp_entropy_under_spec
from ..frozen import exclude_frozen_submodules
from .image_tokenizer import JanusImageTokenizer
from .loading import JANUS_FILE_SOURCES, load_pretrained
from .model import JanusSpecialTokens, SharedTokenizer, build_janus_config, word_level_tokenizer

__all__ = ['JanusPolicy', 'JanusDecodingCache']

#: sub-modules of ``JanusModel`` that stay frozen (STAGE's ``grpo_trainer.py`` freezes every
#: parameter whose name starts with ``vision_model``, ``aligner`` or ``gen``: the understanding
#: encoder and its aligner, the VQ tokenizer, the generation embeddings, aligner and head)
FROZEN_PARTS = ('vision_model', 'aligner', 'vqmodel', 'generation_embeddings',
                'generation_aligner', 'generation_head')
#: sub-modules of ``JanusModel`` that image generation reads besides the VQ: what a ``checkpoint``
#: of a model built from ``arch`` holds (the language model and the generation embedding,
#: aligner and head; the understanding encoder is never used to generate)
GENERATION_PARTS = ('language_model', 'generation_embeddings', 'generation_aligner',
                    'generation_head')
_DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


class JanusDecodingCache:
    """One rollout's decoding state: a transformers ``StaticCache`` for ``batch`` rows, the 2-D
    attention mask of the filled positions (left padding of the prompts is 0) and the position
    ids. Allocated once per batch size and reused; a longer prompt batch than the capacity
    reallocates the cache (grown in steps of 64 positions)."""

    def __init__(self, text_config, batch: int, capacity: int, device: torch.device):
        from transformers import StaticCache
        self.batch, self.capacity = batch, capacity
        self.kv = StaticCache(config=text_config, max_cache_len=capacity)
        self.mask = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.positions = torch.arange(capacity, device=device).expand(batch, -1)
        self.length = 0          # positions filled
        self.prompt_len = 0      # L, prompt positions (BOS ... image-start)
        self._config = text_config

    def start(self, prompt_len: int, total: int) -> None:
        """Empty the cache for a rollout of ``total`` positions whose prompt has ``prompt_len``
        (reallocated if it does not fit)."""
        if total > self.capacity:
            self.__init__(self._config, self.batch, -(-total // 64) * 64, self.mask.device)
        else:
            self.kv.reset()
            self.mask.zero_()
        self.length, self.prompt_len = 0, prompt_len


@POLICIES.register_module()
class JanusPolicy(Policy):
    """Janus-Pro (deepseek-ai/Janus) as a vargo policy over transformers' Janus classes:
    text-conditional, raster-order image tokens, one token per action.

    Rollout conventions: ``actions [B, T]`` long (``T = 576`` for Janus-Pro's 24 x 24 grid),
    ``action_step = arange(T)``, ``action_pos [T, 2]`` = (row, col), images decoded by the
    model's VQ to [0, 1].

    The prompt is the official one: ``"<|User|>: {prompt}\\n\\n<|Assistant|>:"`` (the
    ``deepseek`` SFT template with an empty system prompt), tokenised with BOS, followed by the
    image-start token. Prompts of a batch are left-padded (masked); the CFG unconditional prompt
    of each is its own token sequence with every token between BOS and the image-start token
    replaced by the pad token (``generation_inference.py``), under the same mask.

    Args:
        model_path: a local directory in transformers' format (``config.json``, safetensors
            weights, tokenizer), e.g. a download of deepseek-community/Janus-Pro-7B; loaded with
            ``local_files_only``, strictly. None: a randomly initialised model of ``arch``.
        arch: without ``model_path``: ``'Janus-Pro-1B'``, ``'Janus-Pro-7B'`` or a dict
            ``dict(base=..., text=dict(...), vision=dict(...), vq=dict(...))`` of
            ``JanusConfig`` sub-config settings (tests use tiny ones).
        tokenizer: without ``model_path``: ``dict(vocabulary=[...])``, a small word-level
            tokenizer (:func:`~vargo.components.policies.janus.model.word_level_tokenizer`).
        checkpoint: with ``arch``: a weights file (``.safetensors`` or a data-only ``torch.save``)
            of the generation parts (:data:`GENERATION_PARTS`; keys ``language_model.*``,
            ``generation_embeddings.*``, ...), loaded strictly; what
            ``tools/pretrain_shapes.py janus-t2i`` writes. None: random.
        tokenizer_checkpoint: with ``arch``: the ``JanusVQVAE`` weights (its own keys), loaded
            strictly; what ``tools/pretrain_shapes.py janus-vq`` writes. None: random.
        roles: the chat roles of the prompt template: ``('<|User|>', '<|Assistant|>')`` as
            Janus-Pro's README; STAGE's trainer writes ``('User', 'Assistant')``.
        system_prompt: prepended with ``"\\n\\n"`` when not empty (official: empty).
        image_start_token: the token the prompt ends with.
        dtype: parameter dtype, ``'float32'`` or ``'bfloat16'`` (logits are always fp32).
        attn_implementation: transformers attention (``'sdpa'``, ``'eager'``, ...).
        gradient_checkpointing: activation checkpointing of the language model in training
            forwards (STAGE enables it).
        onednn_linears: run the training forward and backward of the language model's large
            ``nn.Linear`` layers on oneDNN (CPU fp32; the same gradients up to summation order;
            :func:`~vargo.components.modules.onednn_linear.use_onednn_linears`). Off by
            default: at Janus-Pro-1B's width (6 of its 24 layers, 2 samples) the update ran
            0.80x as fast with it on an Intel Xeon (README, "Performance"; AMD not measured);
            ``'auto'`` turns it on unless the CPU is Intel's; ``tools/benchmark.py
            --linear-kernels-ab`` measures it. bf16 weights keep ``F.linear`` either way.
            Grad-free forwards are unaffected.

    Attributes:
        file_sources: directory name -> where it is published.
    """

    file_sources: dict[str, str] = JANUS_FILE_SOURCES

    def __init__(self, *, model_path: Optional[str] = None,
                 arch: Union[None, str, dict] = None, tokenizer: Optional[dict] = None,
                 checkpoint: Optional[str] = None, tokenizer_checkpoint: Optional[str] = None,
                 roles: Sequence[str] = ('<|User|>', '<|Assistant|>'), system_prompt: str = '',
                 image_start_token: str = '<begin_of_image>', dtype: str = 'float32',
                 attn_implementation: str = 'sdpa', gradient_checkpointing: bool = False,
                 onednn_linears: Union[bool, str] = False):
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f'JanusPolicy dtype={dtype!r} is not one of {sorted(_DTYPES)}')
        if isinstance(roles, str) or len(roles) != 2 or not all(isinstance(r, str) and r
                                                                for r in roles):
            raise ValueError(f'JanusPolicy roles={roles!r} must be two role names, e.g. '
                             f"('<|User|>', '<|Assistant|>')")
        self.roles, self.system_prompt = tuple(roles), str(system_prompt)
        torch_dtype = _DTYPES[dtype]
        if model_path is not None:
            if arch is not None or tokenizer is not None or checkpoint or tokenizer_checkpoint:
                raise ValueError('JanusPolicy: set either model_path (a local directory with its '
                                 'own config, weights and tokenizer) or arch + tokenizer (+ '
                                 'checkpoint / tokenizer_checkpoint), not both')
            model, tok = load_pretrained(model_path, dtype=torch_dtype,
                                         attn_implementation=attn_implementation)
        else:
            if arch is None or tokenizer is None:
                raise ValueError('JanusPolicy needs model_path (a local Janus-Pro directory), or '
                                 'arch and tokenizer=dict(vocabulary=[...]) for a random model')
            if not isinstance(tokenizer, dict) or set(tokenizer) != {'vocabulary'}:
                raise ValueError(f'JanusPolicy tokenizer={tokenizer!r} must be '
                                 f'dict(vocabulary=[words...])')
            from transformers import JanusForConditionalGeneration
            tok = word_level_tokenizer(tokenizer['vocabulary'], roles=self.roles)
            config = build_janus_config(arch, token_ids=dict(
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id))
            config._attn_implementation = attn_implementation
            model = JanusForConditionalGeneration(config).to(torch_dtype)
        text_cfg = model.config.text_config
        if len(tok) > text_cfg.vocab_size:
            raise ValueError(f'the tokenizer has {len(tok)} tokens but the language model only '
                             f'{text_cfg.vocab_size} embeddings; raise arch text.vocab_size')
        self.janus = model
        self.tokenizer = SharedTokenizer(tok)
        self.special = JanusSpecialTokens.of(tok, image_start_token)
        if tokenizer_checkpoint:
            self._load_part(self.janus.model.vqmodel, tokenizer_checkpoint, 'Janus VQ tokenizer')
        if checkpoint:
            self._load_part(self.generation_modules(), checkpoint, 'Janus generation weights')

        # only the language model trains (STAGE); the rest is frozen and out of the state dict
        self.janus.requires_grad_(False)
        self.janus.model.language_model.requires_grad_(True)
        # the text head is unused by image generation; tied to the embedding it trains with it
        lm_head_tied = self.janus.lm_head.weight is self.lm.embed_tokens.weight
        # the hooks sit on the policy, so the transformers model's own state dict (and
        # save_pretrained) stays complete
        exclude_frozen_submodules(self, [f'janus.model.{n}' for n in FROZEN_PARTS]
                                  + ([] if lm_head_tied else ['janus.lm_head']))
        onednn_linears_option('JanusPolicy', self.lm, onednn_linears)
        if gradient_checkpointing:
            self.lm.activation_checkpointing_enable(
                activation_checkpointing_kwargs=dict(use_reentrant=False))

        grid = int(model.config.vq_config.num_patches)
        self.grid_size = grid
        self.codebook_size = int(model.config.vq_config.num_embeddings)
        register_raster_action_axis(self, grid)
        self.train(True)

    @staticmethod
    def _load_part(module: torch.nn.Module, path: str, what: str) -> None:
        """Load the weights file ``path`` into ``module`` data-only and strictly (every missing,
        unexpected or mis-shaped key is one error naming the file and the fix)."""
        from vargo.core.checkpoint import (load_state_dict_strict, official_file_missing,
                                           read_state_dict)
        state = read_state_dict(path, what=what, missing=lambda p: official_file_missing(
            p, what=what, sources=JANUS_FILE_SOURCES, family='Janus', listing='Janus README'))
        load_state_dict_strict(module, state, source=f'{what} file {path!r}',
                               hint='check the arch (text / vq sizes) and the tokenizer '
                                    'vocabulary against the config the file was trained with')

    def generation_modules(self) -> torch.nn.ModuleDict:
        """The generation parts (:data:`GENERATION_PARTS`) as one module whose state dict is
        what a ``checkpoint`` holds (the modules are shared, not copied)."""
        return torch.nn.ModuleDict({n: getattr(self.janus.model, n) for n in GENERATION_PARTS})

    @property
    def image_tokenizer(self) -> JanusImageTokenizer:
        """The model's VQ as vargo's image-tokenizer interface (official quantisation)."""
        return JanusImageTokenizer(self.janus.model.vqmodel)

    # ---- sizes --------------------------------------------------------------------------------
    @property
    def lm(self):
        """The language model (a transformers ``LlamaModel``), the trained part."""
        return self.janus.model.language_model

    @property
    def num_actions(self) -> int:
        """A = T, the image tokens per sample."""
        return self.grid_size * self.grid_size

    @property
    def device(self) -> torch.device:
        return self.lm.embed_tokens.weight.device

    def train(self, mode: bool = True) -> 'JanusPolicy':
        super().train(mode)
        for name in FROZEN_PARTS:                 # frozen modules never leave eval mode
            getattr(self.janus.model, name).eval()
        return self

    def trainable_parameters(self):
        return [p for p in self.lm.parameters() if p.requires_grad]

    def shard_units(self) -> list[torch.nn.Module]:
        """The language model's decoder layers, its token embedding and its final norm (the
        trained part; each is called through its forward: the embedding by
        :meth:`condition_inputs`, the others by the language model). The frozen parts stay
        whole on every rank, shared with the reference."""
        return [*self.lm.layers, self.lm.embed_tokens, self.lm.norm]

    # ---- prompts ------------------------------------------------------------------------------
    def format_prompt(self, prompt: str) -> str:
        """The official SFT text of ``prompt`` (``apply_sft_template_for_multi_turn_prompts``
        with the ``deepseek`` template): ``"{user}: {prompt}\\n\\n{assistant}:"``."""
        text = f'{self.roles[0]}: {prompt.strip()}\n\n{self.roles[1]}:'
        return f'{self.system_prompt}\n\n{text}' if self.system_prompt else text

    def prompt_ids(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``(ids [B, L], mask [B, L])`` long on the model's device: BOS, the formatted prompt,
        the image-start token, left-padded with the pad token (mask 0)."""
        sp = self.special
        enc = self.tokenizer([self.format_prompt(p) for p in prompts],
                             add_special_tokens=True)['input_ids']
        seqs = [([] if s and s[0] == sp.bos else [sp.bos]) + list(s) + [sp.boi] for s in enc]
        length = max(len(s) for s in seqs)
        limit = self.janus.config.text_config.max_position_embeddings - self.num_actions
        if length > limit:
            raise ValueError(f'a prompt has {length} tokens; with the {self.num_actions} image '
                             f'tokens it exceeds the language model\'s {limit + self.num_actions} '
                             f'positions: shorten the prompt')
        ids = torch.full((len(seqs), length), sp.pad, dtype=torch.long)
        mask = torch.zeros(len(seqs), length, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, length - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, length - len(s):] = 1
        return ids.to(self.device), mask.to(self.device)

    def null_prompt_ids(self, ids: Tensor, mask: Tensor) -> Tensor:
        """The CFG unconditional prompt of each row of ``ids`` (left-padded): every token
        strictly between its BOS (first unmasked position) and the image-start token (last
        position) becomes the pad token, as ``generation_inference.py``'s
        ``tokens[i, 1:-1] = pad_id``."""
        length = ids.shape[1]
        pos = torch.arange(length, device=ids.device)
        first = length - mask.sum(dim=1, keepdim=True)
        inner = (pos > first) & (pos < length - 1)
        return ids.masked_fill(inner, self.special.pad)

    def encode_conditions(self, cond: Conditions) -> Conditions:
        """Check that ``cond`` carries prompts (they are tokenised where used, since the prompt
        embeddings belong to the trained language model)."""
        if cond.prompts is None:
            raise ValueError('a JanusPolicy needs Conditions.prompts (text-to-image)')
        return cond

    def condition_inputs(self, cond: Conditions, *, with_null: bool) -> tuple[Tensor, Tensor]:
        """``(embeddings [B2, L, D], mask [B2, L])`` of the prompts, ``B2 = 2 B`` rows
        ``[cond; uncond]`` with ``with_null`` (the embeddings carry the language model's
        gradient)."""
        ids, mask = self.prompt_ids(self.encode_conditions(cond).prompts)
        if with_null:
            ids = torch.cat([ids, self.null_prompt_ids(ids, mask)])
            mask = torch.cat([mask, mask])
        return self.lm.embed_tokens(ids), mask

    def image_embeddings(self, tokens: Tensor) -> Tensor:
        """Language-model inputs of image tokens (generation embedding + aligner)."""
        return self.janus.prepare_embeddings_for_image_generation(tokens)

    def _hidden(self, x: Tensor, mask: Tensor, *, positions: Optional[Tensor] = None,
                cache=None) -> Tensor:
        out = self.lm(inputs_embeds=x, attention_mask=mask, position_ids=positions, cache=cache,
                      use_cache=cache is not None)
        return out.last_hidden_state

    def _logits(self, hidden: Tensor) -> Tensor:
        return self.janus.model.generation_head(hidden).float()

    # ---- the Policy interface -----------------------------------------------------------------
    def evaluate(self, rollout: Rollout, *, spec: LogprobSpec,
                 with_entropy: bool = True) -> PolicyEval:
        """Teacher-forced log-probs ``[B, T]`` of ``rollout.actions`` and entropies ``[B, T]``
        from the generation head under ``spec``, in ONE forward of ``[prompt, image tokens]``
        (``[cond; uncond]`` rows when ``spec`` uses CFG).

        ``spec.mode='none'``: ``log_softmax(cond_logits / temperature)`` (STAGE's
        ``_get_per_token_logps``); ``'rollout'``: exactly the sampling distribution.
        """
        tokens = rollout.actions.to(self.device)                           # [B, T]
        b, t = tokens.shape
        use_cfg = spec.uses_cfg
        emb, mask = self.condition_inputs(rollout.cond, with_null=use_cfg)
        g = 2 if use_cfg else 1
        img = self.image_embeddings(tokens[:, :-1])
        if use_cfg:
            img = torch.cat([img, img])
        x = torch.cat([emb, img.to(emb.dtype)], dim=1)
        full = torch.cat([mask, mask.new_ones(g * b, t - 1)], dim=1)
        hidden = self._hidden(x, full)[:, emb.shape[1] - 1:]                 # [B2, T, D]
        logits = self._logits(hidden)
        logp, ent = logp_entropy_under_spec(logits.view(g, b * t, -1), tokens, spec,
                                            with_entropy=with_entropy)
        return PolicyEval(logp=logp, entropy=ent)

    @torch.no_grad()
    def decode(self, rollout: Rollout, *, chunk: int = 16) -> Tensor:
        """``[B, 3, H, W]`` images in [0, 1]: the VQ decoder's output ``x`` in [-1, 1] as
        ``clamp((x + 1) / 2, 0, 1)`` (``generation_inference.py``), ``chunk`` at a time."""
        tokens = rollout.actions.to(self.device)
        vq = self.image_tokenizer
        return decode_in_chunks(vq.decode, tokens, chunk)

    def embed_actions(self, rollout: Rollout) -> Tensor:
        """``[B, T, 8]`` L2-normalised VQ codebook vectors of the sampled tokens (STAGE's
        ``quant_b``: the official ``decode_code`` normalises the codes)."""
        with torch.no_grad():
            return self.image_tokenizer.codebook()[rollout.actions.to(self.device)]

    def rollout_axes(self) -> tuple[Tensor, Tensor]:
        """``(action_step [T], action_pos [T, 2])`` of the raster order."""
        return self.action_step, self.action_pos

    def flops_per_sample(self, spec: Optional[LogprobSpec] = None,
                         rollout: Optional[Rollout] = None) -> int:
        """Matmul FLOPs of one teacher-forced :meth:`evaluate` forward, per sample, counted as
        ``LlamaGenPolicy`` counts them (two per multiply-add; the backward costs twice this).

        Over the ``S = L + T - 1`` input positions (``L`` prompt positions, padded to the
        longest prompt of ``rollout``; without ``rollout`` ``L = 1``, the image-start token
        alone, a lower bound), per layer of the language model: the q/k/v/o projections
        ``2 S d (2 d + 2 d_kv)`` and the SwiGLU MLP ``3 * 2 S d d_ff``; attention over the causal
        pairs ``2 d S (S + 1)`` (padding keys counted: the masked kernel computes them). Then the
        generation aligner on the ``T - 1`` image inputs ``2 (T - 1) (e d + d^2)`` (``e`` = 8,
        the code width) and the generation head on the ``T`` predicting positions
        ``2 T (d^2 + d V)``. With ``spec.uses_cfg`` the language model and the head count twice
        (``[cond; uncond]`` rows; the image embeddings are computed once). Not counted: embedding lookups, norms, rotary tables, softmax and entropy.
        """
        c = self.janus.config.text_config
        t, d = self.num_actions, c.hidden_size
        prompt = 1 if rollout is None else self.prompt_ids(rollout.cond.prompts)[0].shape[1]
        s = prompt + t - 1
        d_kv = c.num_key_value_heads * getattr(c, 'head_dim', d // c.num_attention_heads)
        layer = 2 * s * d * (2 * d + 2 * d_kv) + 3 * 2 * s * d * c.intermediate_size \
            + 2 * d * s * (s + 1)
        aligner = 2 * (t - 1) * sum(m.weight.numel() for m in self.janus.model.generation_aligner
                                    .modules() if isinstance(m, torch.nn.Linear))
        head = self.janus.model.generation_head
        head_flops = 2 * t * (head.proj_out.weight.numel() + head.vision_head.weight.numel())
        doubled = 2 if spec is not None and spec.uses_cfg else 1
        return int(doubled * (c.num_hidden_layers * layer + head_flops) + aligner)

    # ---- raster decoding (the protocol ARSampler drives) --------------------------------------
    def decoding_cache_key(self, batch: int) -> Hashable:
        """What fixes the cache's shape for ``batch`` rows (equal keys: reused, also by the
        frozen reference)."""
        c, w = self.janus.config.text_config, self.lm.embed_tokens.weight
        return ('janus', batch, c.num_hidden_layers, c.num_key_value_heads, c.hidden_size,
                w.dtype, w.device)

    def decoding_modules(self) -> list[torch.nn.Module]:
        """What ``prefill`` and ``decode_step`` run: the language model, the image-generation
        embedding and aligner, and the generation head (their linear layers use packed weights
        during a rollout, see ``ARSampler(packed_weights=...)``)."""
        m = self.janus.model
        return [self.lm, *(getattr(m, name) for name in ('generation_embeddings',
                                                          'generation_aligner', 'generation_head')
                           if getattr(m, name, None) is not None)]

    def new_decoding_cache(self, batch: int) -> JanusDecodingCache:
        """A transformers static cache for ``batch`` rows (``2 B`` with CFG), sized for the
        image tokens and a prompt of up to 64 tokens (grown when a prompt batch is longer)."""
        return JanusDecodingCache(self.janus.config.text_config, batch, self.num_actions + 64,
                                  self.device)

    def prefill(self, cond: Conditions, given: Optional[Tensor], cache: JanusDecodingCache, *,
                with_null: bool) -> Tensor:
        """Run the prompt (``[cond; uncond]`` with ``with_null``) and the kept tokens
        ``given [B, m]`` (or None), filling ``cache``; return fp32 logits ``[B2, m + 1, V]``,
        row ``j`` predicting token ``j`` (the image-start position predicts token 0)."""
        emb, mask = self.condition_inputs(cond, with_null=with_null)
        length = emb.shape[1]
        x = emb
        if given is not None and given.shape[1]:
            g2 = torch.cat([given, given]) if with_null else given
            x = torch.cat([emb, self.image_embeddings(g2).to(emb.dtype)], dim=1)
            mask = torch.cat([mask, mask.new_ones(g2.shape)], dim=1)
        n = x.shape[1]
        cache.start(length, length + self.num_actions)
        cache.mask[:, :n] = mask
        cache.length = n
        hidden = self._hidden(x, cache.mask[:, :n], positions=cache.positions[:, :n],
                              cache=cache.kv)
        return self._logits(hidden[:, length - 1:])

    def decode_step(self, tokens: Tensor, index: int, cache: JanusDecodingCache) -> Tensor:
        """Feed image token ``index`` (``tokens [B2]``) and return the fp32 logits ``[B2, V]`` of
        token ``index + 1``."""
        pos = cache.length
        if pos != cache.prompt_len + index:
            raise RuntimeError(f'decode_step(index={index}) out of order: the cache holds {pos} '
                               f'positions, expected {cache.prompt_len + index}')
        cache.mask[:, pos] = 1
        hidden = self._hidden(self.image_embeddings(tokens[:, None]), cache.mask[:, :pos + 1],
                              positions=cache.positions[:, pos:pos + 1], cache=cache.kv)
        cache.length = pos + 1
        return self._logits(hidden[:, -1])

    # ---- pretraining (Shapes) ------------------------------------------------------------------
    def pretrain_loss(self, tokens: Tensor, cond: Conditions, *, null_prob: float = 0.1,
                      generator: Optional[torch.Generator] = None) -> Tensor:
        """Next-token cross-entropy of the image tokens ``tokens [B, T]`` from the generation
        head, teacher-forced after the prompt (``[prompt, image-start, tokens[:, :-1]]`` predicts
        ``tokens``), averaged over the ``B T`` tokens. For CFG each prompt is replaced by its
        unconditional twin (:meth:`null_prompt_ids`, the prompt the sampler guides with) with
        probability ``null_prob``, as Janus trains its guidance (the Janus paper: 10% of the
        prompts replaced by pad tokens).

        Gradients reach whatever requires them (in RL only the language model; the Shapes
        pretrainer also unfreezes the generation embedding, aligner and head)."""
        tokens = tokens.to(self.device)
        b, t = tokens.shape
        ids, mask = self.prompt_ids(self.encode_conditions(cond).prompts)
        if null_prob > 0:
            drop = torch.rand(b, generator=generator) < null_prob
            ids = torch.where(drop.to(ids.device)[:, None], self.null_prompt_ids(ids, mask), ids)
        emb = self.lm.embed_tokens(ids)
        img = self.image_embeddings(tokens[:, :-1]).to(emb.dtype)
        x = torch.cat([emb, img], dim=1)
        full = torch.cat([mask, mask.new_ones(b, t - 1)], dim=1)
        hidden = self._hidden(x, full)[:, emb.shape[1] - 1:]                   # [B, T, D]
        return F.cross_entropy(self._logits(hidden).flatten(0, 1), tokens.flatten())
