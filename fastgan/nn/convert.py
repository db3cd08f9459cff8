"""convert(): swap an existing model's torch layers for fastgan's fused modules.

What is replaced (the entries of fastgan.nn.registry):
- nn.BatchNorm1d/2d/3d whose output goes only to an nn.ReLU or nn.LeakyReLU becomes
  BatchNormLeakyReLU1d/2d/3d (negative_slope 0 for ReLU) and the activation becomes nn.Identity;
- nn.ConvTranspose2d becomes fastgan.nn.ConvTranspose2d, and when its output goes only to an
  nn.Tanh, nn.ReLU or nn.LeakyReLU that activation is fused into it (and becomes nn.Identity);
- nn.Conv2d becomes fastgan.nn.Conv2d (its fast double backward for gradient penalties), whose
  weight is then stored channels-last, as it computes.
On the CPU each part of those convolutions runs by torch's kernels or fastgan's, whichever the
measured dispatch found faster for the shape (fastgan.backends.cpu).

The data flow is read from torch.fx traces of the forward in train and eval mode; a pair is fused
only when both traces show the layer called once, its output used by nothing but the activation,
and the activation module called nowhere else. A forward that cannot be traced is not rewritten:
its submodules are examined one by one (an nn.Sequential by its order of layers), assuming they
are called through their own forward. Modules registered under several names, modules with hooks
and subclasses of the torch layers are left alone.

The new modules take over the original parameter and buffer tensors themselves (device, dtype,
memory format, requires_grad and an optimizer's references carry over), and no module is added
or removed, so the converted model's state_dict has the same keys and loads both ways.
"""
import collections
import copy as _copy
import dataclasses
import logging

from torch import fx, nn

from fastgan.nn import registry

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Conversion:
    """One replacement: `names` are the qualified names of the replaced modules (the layer, and
    the activation that became nn.Identity, if any)."""
    names: tuple
    original: str
    replacement: str

    def __str__(self):
        return f"{' + '.join(self.names)}: {self.original} -> {self.replacement}"


@dataclasses.dataclass
class ConversionReport:
    """What convert() changed (`conversions`) and what it left alone for a reason (`notes`)."""
    conversions: list
    notes: list

    def __str__(self):
        lines = [f"converted {len(self.conversions)} layer(s)"]
        lines += [f"  {conversion}" for conversion in self.conversions]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def convert(module, inplace=None, report=False, *, copy=False):
    """Returns `module` with its BatchNorm->ReLU/LeakyReLU pairs, ConvTranspose2d and Conv2d
    layers replaced by fastgan's modules: same outputs, gradients and running statistics, same
    state_dict keys. By default `module` itself is converted, as torch's
    SyncBatchNorm.convert_sync_batchnorm does: the new modules hold its Parameter objects, so an
    optimizer built before the conversion keeps training the model. copy=True converts a deep
    copy and leaves `module` alone. Use the returned model either way (a bare ConvTranspose2d is
    replaced, not modified). `inplace` is the older spelling: inplace=False is copy=True. With
    report=True returns (model, ConversionReport). Each change is also logged at INFO level on
    the "fastgan.nn.convert" logger."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(copy, bool):
        raise TypeError(f"copy must be a bool, got {type(copy).__name__}")
    if inplace is not None:
        if not isinstance(inplace, bool):
            raise TypeError(f"inplace must be a bool or None, got {type(inplace).__name__}")
        if copy and inplace:
            raise ValueError("inplace=True and copy=True contradict each other; pass copy only")
        copy = not inplace
    model = _copy.deepcopy(module) if copy else module
    notes = []
    pairs = _fusible_pairs(model, "", notes)
    shared = _shared_modules(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    conversions, fused_layers = [], set()
    for layer_name, activation_name in pairs:
        layer, activation = modules[layer_name], modules[activation_name]
        refusal = _refusal(layer_name, layer, shared) or _refusal(activation_name, activation,
                                                                  shared)
        if refusal:
            notes.append(refusal)
            continue
        model, conversion = _fuse(model, layer_name, layer, activation_name, activation)
        conversions.append(conversion)
        fused_layers.add(layer_name)
    for name, layer in modules.items():
        entry = registry.converted_entry(layer)
        if entry is not None and entry.converted == registry.ALWAYS and name not in fused_layers:
            refusal = _refusal(name, layer, shared)
            if refusal:
                notes.append(refusal)
            else:  # name "" (the model itself is such a layer) gives a new model
                model, conversion = _fuse(model, name, layer, None, None)
                conversions.append(conversion)
    torch_layers = registry.converted_torch_layers()
    notes += [f"{name}: {type(layer).__name__} is a subclass of a torch layer; left alone"
              for name, layer in modules.items()
              if isinstance(layer, torch_layers) and type(layer) not in torch_layers
              and not isinstance(layer, registry.FUSED_CLASSES)]
    order = {name: index for index, name in enumerate(modules)}
    conversions.sort(key=lambda conversion: order[conversion.names[0]])
    result = ConversionReport(conversions, list(dict.fromkeys(notes)))
    for line in str(result).splitlines():
        logger.info(line.strip())
    return (model, result) if report else model


# --- finding the pairs ------------------------------------------------------------------------

class _Tracer(fx.Tracer):
    """torch.nn layers and fastgan's layers are opaque calls; everything else is traced through."""

    def is_leaf_module(self, m, module_qualified_name):
        return (isinstance(m, registry.FUSED_CLASSES)
                or super().is_leaf_module(m, module_qualified_name))


def _is_plain_sequential(module):
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _fusible_pairs(module, prefix, notes):
    """(layer name, activation name) pairs whose fusion cannot change what `module` computes."""
    if _Tracer().is_leaf_module(module, prefix):
        return []
    try:
        pairs = None
        for mode_pairs in _traced_pairs(module, prefix, notes):
            pairs = mode_pairs if pairs is None else pairs & mode_pairs
        return sorted(_qualified(prefix, layer, activation) for layer, activation in pairs)
    except Exception as error:  # any failure to trace: fall back to the submodules
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        notes.append(f"{prefix or type(module).__name__}: forward could not be traced "
                     f"({message}); its submodules are converted one by one, assuming it calls "
                     f"them through their forward")
    pairs = []
    children = list(module.named_children())
    if _is_plain_sequential(module):
        for (layer_name, layer), (activation_name, activation) in zip(children, children[1:]):
            if _fusible(layer, activation):
                pairs.append(_qualified(prefix, layer_name, activation_name))
    for name, child in children:
        pairs += _fusible_pairs(child, _qualified(prefix, name), notes)
    return pairs


def _qualified(prefix, *names):
    joined = tuple(f"{prefix}.{name}" if prefix else name for name in names)
    return joined if len(joined) > 1 else joined[0]


def _fusible(layer, activation):
    entry = registry.converted_entry(layer)
    return entry is not None and type(activation) in entry.activations


def _traced_pairs(module, prefix, notes):
    """The fusible pairs of a trace in train mode, then of one in eval mode (a forward may branch
    on self.training)."""
    modes = {m: m.training for m in module.modules()}
    try:
        for training in (True, False):
            module.train(training)
            graph = _Tracer().trace(module)
            yield _pairs_in_graph(graph, dict(module.named_modules()), prefix, notes)
    finally:
        for m, training in modes.items():
            m.training = training


def _pairs_in_graph(graph, modules, prefix, notes):
    calls = collections.defaultdict(list)
    attribute_owners = set()  # modules whose tensors the traced code reads directly
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target].append(node)
        elif node.op == "get_attr":
            attribute_owners.add(node.target.rpartition(".")[0])
    pairs = set()
    for layer_name, layer_calls in calls.items():
        if len(layer_calls) != 1 or registry.converted_entry(modules[layer_name]) is None:
            continue
        users = list(layer_calls[0].users)
        activation_call = next((user for user in users if user.op == "call_module"
                                and _fusible(modules[layer_name], modules[user.target])), None)
        if activation_call is None:
            continue
        activation_name = activation_call.target
        reason = None
        if len(users) != 1:
            reason = "its output is also used elsewhere"
        elif activation_call.args != (layer_calls[0],) or activation_call.kwargs:
            reason = "the activation takes other arguments"
        elif len(calls[activation_name]) != 1:
            reason = "the activation is also applied elsewhere"
        elif attribute_owners & {layer_name, activation_name}:
            reason = "the forward reads its tensors directly"
        if reason:
            notes.append(f"{_qualified(prefix, layer_name)} -> "
                         f"{_qualified(prefix, activation_name)} not fused: {reason}")
        else:
            pairs.add((layer_name, activation_name))
    return pairs


# --- replacing --------------------------------------------------------------------------------

def _shared_modules(model):
    counts = collections.Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    return {key for key, count in counts.items() if count > 1}


def _refusal(name, module, shared):
    if id(module) in shared:
        return f"{name}: registered under several names; left alone"
    hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
             module._backward_pre_hooks)
    if any(hooks):
        return f"{name}: has hooks; left alone"
    return None


def _fuse(model, layer_name, layer, activation_name, activation):
    """Replaces `layer` (and `activation`, by nn.Identity); returns the model and the change."""
    entry = registry.converted_entry(layer)
    fused = entry.fuse(layer, activation)
    model = _set_submodule(model, layer_name, fused)
    names, original = (layer_name,), type(layer).__name__
    if activation is not None:
        identity = nn.Identity()
        identity.train(activation.training)
        model = _set_submodule(model, activation_name, identity)
        names, original = (layer_name, activation_name), f"{original} + {activation}"
    return model, Conversion(names, original, _described(fused, layer, entry, activation))


def _described(fused, layer, entry, activation):
    """The fused module's class (qualified where torch has a class of that name) and the
    activation arguments it took, as they stand in the module."""
    name = type(fused).__name__
    if name == type(layer).__name__:
        name = f"fastgan.nn.{name}"
    arguments = [f"{key}={getattr(fused, key)!r}"
                 for key, value in entry.activation_arguments(activation).items()
                 if value is not None]
    return f"{name}({', '.join(arguments)})" if arguments else name


def _set_submodule(model, name, module):
    """Puts `module` at `name` in `model`; returns the model (`module` itself for name "")."""
    if not name:
        return module
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attribute, module)
    return model
