"""Pretraining of the Shapes benchmark's tokenizers and base models (``tools/pretrain_shapes.py``).

Shared modules: :mod:`.common` (paths, seeds, the training-image stream, the LR schedule, weights
and config IO), :mod:`.loop` (the :class:`~.loop.Pretrainer` interface, the registry of
subcommands and the training loop with its logging and seeding), :mod:`.evaluation`
(reconstruction and sampling evaluations), :mod:`.records` (the JSON record and the model card),
:mod:`.tokenizer` and :mod:`.generator` (what the tokenizer and the generator trainers share) and
:mod:`.cli` (the command line). One module per family registers its subcommands:
:mod:`.llamagen` (``vq``, ``text-encoder``, ``llamagen-c2i``, ``llamagen-t2i``), :mod:`.var`
(``msvq``, ``var-c2i``), :mod:`.mar` (``kl-vae``, ``mar-c2i``), :mod:`.vqgan` (``vqgan``,
``vqgan-c2i``) and :mod:`.janus` (``janus-vq``, ``janus-t2i``); no family module imports
another's. ``eval`` picks the pretrainer registered for a config's ``policy.type``.
"""
from .loop import PRETRAINERS, WRITERS, Pretrainer, pretrainer_for, register, train

__all__ = ['PRETRAINERS', 'WRITERS', 'Pretrainer', 'pretrainer_for', 'register', 'train']
