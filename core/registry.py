"""vargo's registries (MMEngine ``Registry`` in scope ``vargo``) and the checked build.

Ten registries:

* the six component registries ``POLICIES``, ``SAMPLERS``, ``ADVANTAGE_ESTIMATORS``,
  ``TOKEN_SELECTORS``, ``REWARD_HEADS``, ``REGULARIZERS``;
* ``MODELS``, ``LOOPS``, ``HOOKS``, ``DATASETS``, children of MMEngine's roots of the same name, so
  MMEngine's Runner finds vargo's ``RLAlgorithm``, ``GRPOLoop``, hooks and datasets.

MMEngine keys a root's children by scope, so a root can hold only one ``vargo`` child; the six
component kinds have no MMEngine root of their own, so they are vargo-scoped roots (see
docs/design.md). Every registry has ``locations`` so registration needs no manual import.

Every registry builds through :func:`checked_build`, which fails *at build time* with a message
that names the fix when

* ``type`` is not registered (listing the registered names and the closest match),
* a keyword is not accepted by the class (naming the closest accepted keyword),
* the built object does not implement the registry's interface.
"""
from __future__ import annotations

import difflib
import inspect
import sys
from typing import Any, Optional

from mmengine.config import Config, ConfigDict
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry, build_from_cfg

from . import interfaces

__all__ = ['POLICIES', 'SAMPLERS', 'ADVANTAGE_ESTIMATORS', 'TOKEN_SELECTORS', 'REWARD_HEADS',
           'REGULARIZERS', 'MODELS', 'LOOPS', 'HOOKS', 'DATASETS', 'COMPONENT_REGISTRIES',
           'ALL_REGISTRIES', 'checked_build', 'ConfigError']


class ConfigError(ValueError):
    """A configuration mistake found before training; the message names the fix."""


def closest(name: str, candidates) -> Optional[str]:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return match[0] if match else None


def _accepted_keywords(obj) -> Optional[set[str]]:
    """Keyword names ``obj`` accepts, or None if it takes ``**kwargs``."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    if target is object.__init__:
        return set()  # no own __init__: the class takes no settings (object's ``**kwargs`` lies)
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    names = set()
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.name != 'self' and p.kind is not inspect.Parameter.VAR_POSITIONAL:
            names.add(p.name)
    return names


def _required_keywords(obj) -> set[str]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return set()
    return {p.name for p in sig.parameters.values()
            if p.default is inspect.Parameter.empty and p.name != 'self'
            and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}


def _var_name(registry: Registry) -> str:
    """The module-level name of a registry, e.g. ``POLICIES`` for ``policy``."""
    name = registry.name.upper()
    return name[:-1] + 'IES' if name.endswith('Y') else name + 'S'


def checked_build(cfg, registry: Registry, default_args: Optional[dict] = None) -> Any:
    """``build_from_cfg`` with build-time checks of type, keywords and interface."""
    if isinstance(cfg, Config):
        cfg = cfg._cfg_dict
    if not isinstance(cfg, (dict, ConfigDict)):
        raise ConfigError(f'{registry.name} config must be a dict with a "type" key, '
                          f'got {type(cfg).__name__}: {cfg!r}')
    if 'type' not in cfg:
        raise ConfigError(f'{registry.name} config {dict(cfg)!r} has no "type" key; registered '
                          f'types: {", ".join(sorted(registry.module_dict)) or "(none)"}')
    obj_type = cfg['type']
    if isinstance(obj_type, str):
        registry.import_from_location()
        obj_cls = registry.get(obj_type)
        if obj_cls is None:
            names = sorted(registry.module_dict)
            hint = closest(obj_type.split('.')[-1], names)
            raise ConfigError(
                f'Unknown {registry.name} type {obj_type!r}. '
                + (f'Did you mean {hint!r}? ' if hint else '')
                + f'Registered {registry.name} types: {", ".join(names) or "(none)"}. '
                  f'A new component needs @{_var_name(registry)}.register_module() '
                  f'(see docs/adding_a_component.md).')
    else:
        obj_cls = obj_type
    accepted = _accepted_keywords(obj_cls)
    given = {k for k in cfg if k not in ('type', '_scope_')}  # MMEngine pops ``_scope_`` itself
    if accepted is not None:
        name = getattr(obj_cls, '__name__', str(obj_cls))
        for key in sorted(given - accepted):
            hint = closest(key, accepted)
            raise ConfigError(
                f'{name} got an unexpected keyword {key!r}'
                + (f'; did you mean {hint!r}?' if hint else '.')
                + f' {name} accepts: {", ".join(sorted(accepted)) or "no settings"}.')
        provided = given | set((default_args or {}).keys())
        missing = sorted(_required_keywords(obj_cls) - provided)
        if missing:
            raise ConfigError(f'{name} is missing required setting(s) {", ".join(missing)}: '
                              f'set them in the config (they define the method, so there is '
                              f'no silent default).')
    if default_args and accepted is not None:
        default_args = {k: v for k, v in default_args.items() if k in accepted}
    obj = build_from_cfg(cfg, registry, default_args)
    interface = getattr(registry, 'interface', None)
    if interface is not None and not isinstance(obj, interface):
        raise ConfigError(f'{type(obj).__name__} was built from the {registry.name} registry but '
                          f'does not implement {interface.__name__}; subclass '
                          f'vargo.core.interfaces.{interface.__name__}.')
    return obj


def _registry(name: str, interface, location: str, parent: Optional[Registry] = None) -> Registry:
    reg = Registry(name, parent=parent, scope='vargo', locations=[location],
                   build_func=checked_build)
    reg.interface = interface
    return reg


POLICIES = _registry('policy', interfaces.Policy, 'vargo.components.policies')
SAMPLERS = _registry('sampler', interfaces.Sampler, 'vargo.components.samplers')
ADVANTAGE_ESTIMATORS = _registry('advantage_estimator', interfaces.AdvantageEstimator,
                                 'vargo.components.advantages')
TOKEN_SELECTORS = _registry('token_selector', interfaces.TokenSelector,
                            'vargo.components.token_selectors')
REWARD_HEADS = _registry('reward_head', interfaces.RewardHead, 'vargo.components.rewards')
REGULARIZERS = _registry('regularizer', interfaces.Regularizer, 'vargo.components.regularizers')

MODELS = _registry('model', None, 'vargo.core.algorithm', parent=MMENGINE_MODELS)
LOOPS = _registry('loop', None, 'vargo.core.loop', parent=MMENGINE_LOOPS)
HOOKS = _registry('hook', None, 'vargo.core.hooks', parent=MMENGINE_HOOKS)
DATASETS = _registry('dataset', None, 'vargo.components.datasets', parent=MMENGINE_DATASETS)

COMPONENT_REGISTRIES = {
    'policy': POLICIES, 'sampler': SAMPLERS, 'advantage_estimator': ADVANTAGE_ESTIMATORS,
    'token_selector': TOKEN_SELECTORS, 'reward_head': REWARD_HEADS, 'regularizer': REGULARIZERS,
}
ALL_REGISTRIES = {**COMPONENT_REGISTRIES, 'model': MODELS, 'loop': LOOPS, 'hook': HOOKS,
                  'dataset': DATASETS}

# Plain vargo children of MMEngine's other roots, so building optimizers, schedulers, visualizers
# etc. under default_scope='vargo' resolves quietly to MMEngine's implementations.
import mmengine.registry as _mmreg  # noqa: E402

for _root in ('RUNNERS', 'RUNNER_CONSTRUCTORS', 'OPTIMIZERS', 'OPTIM_WRAPPERS',
              'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS', 'VISUALIZERS', 'VISBACKENDS',
              'LOG_PROCESSORS', 'FUNCTIONS', 'MODEL_WRAPPERS', 'WEIGHT_INITIALIZERS', 'METRICS',
              'EVALUATOR', 'TRANSFORMS', 'TASK_UTILS', 'INFERENCERS', 'STRATEGIES'):
    _parent = getattr(_mmreg, _root, None)
    if _parent is not None and 'vargo' not in _parent._children:
        Registry(_parent.name, parent=_parent, scope='vargo')

# MMEngine imports ``<scope>.registry`` when it switches to a scope; point it here.
sys.modules.setdefault('vargo.registry', sys.modules[__name__])
