"""oneDNN products for the training forward and backward (components/modules/onednn_linear.py):
gradients equal F.linear's up to summation order, the kernel runs only where autograd records
the call on plain fp32 CPU tensors, small layers keep F.linear, the swapped layers stay
nn.Linear for state dicts, copies and packed decoding, and the policies apply it by option."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vargo.components.modules import onednn_linear as odl
from vargo.components.modules.onednn_linear import (OneDnnLinear, onednn_linear,
                                                    onednn_linear_supported, use_onednn_linears)
from vargo.components.modules.packed_linear import PackedLinears

pytestmark = pytest.mark.skipif(not onednn_linear_supported(),
                                reason='this torch build has no oneDNN linear on the CPU')


def net(bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40, bias=bias), nn.GELU(), nn.Linear(40, 16, bias=bias))


def grads_of(model, x):
    x = x.clone().requires_grad_(True)
    y = model(x)
    # a non-uniform upstream gradient, so that a transposed or summed-wrong formula shows
    (y * torch.linspace(-1, 2, y.numel()).view_as(y)).sum().backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters()}
    out['x'] = x.grad.clone()
    model.zero_grad(set_to_none=True)
    return y.detach(), out


@pytest.mark.parametrize('bias', [True, False])
def test_outputs_and_gradients_equal_f_linear_for_any_leading_shape(bias):
    model = net(bias)
    x = torch.randn(3, 5, 24)
    y_ref, g_ref = grads_of(model, x)
    assert use_onednn_linears(model, min_weight_elements=0) == 2
    assert all(type(m) is OneDnnLinear for m in (model[0], model[2]))
    y, g = grads_of(model, x)
    assert y.shape == (3, 5, 16)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    assert set(g) == set(g_ref)
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-5, atol=1e-6, msg=name)


def test_function_gradients_pass_gradcheck_in_double_inputs_cast_per_call():
    """The backward formulas against finite differences (the kernel itself is fp32, so the
    check runs on the composition with casts, at fp32-appropriate tolerances)."""
    torch.manual_seed(1)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return odl.OneDnnLinearFunction.apply(x.float(), w.float(), b.float()).double()
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-2, atol=1e-2, rtol=1e-2)


def test_kernel_runs_only_when_autograd_records_plain_fp32_cpu_tensors(monkeypatch):
    calls = []
    kernel = odl._inner_product
    monkeypatch.setattr(odl, '_inner_product', lambda *a: calls.append(1) or kernel(*a))
    model = net()
    use_onednn_linears(model, min_weight_elements=0)
    x = torch.randn(4, 24)
    # forward 2 + grad-input 1 (the first layer's x needs none) + grad-weight 2
    model(x).sum().backward()
    assert len(calls) == 5
    calls.clear()
    with torch.no_grad():
        model(x)
    model.requires_grad_(False)
    model(x)                                   # grad mode on, but nothing to differentiate
    model.requires_grad_(True)
    model.to(torch.float64)(x.double())        # another dtype
    assert calls == []


def test_small_layers_keep_f_linear_by_default():
    """Default size floor: layers under 2^18 weight elements (every Shapes model's) stay
    nn.Linear, so small models compute exactly as before; a 512 x 512 layer is swapped."""
    model = nn.Sequential(nn.Linear(128, 512), nn.Linear(512, 512), nn.Linear(512, 256))
    assert use_onednn_linears(model) == 1
    assert [type(m) for m in model] == [nn.Linear, OneDnnLinear, nn.Linear]


def test_swapped_layers_keep_keys_repr_copies_and_pickles():
    model = net()
    keys = list(model.state_dict())
    use_onednn_linears(model, min_weight_elements=0)
    assert list(model.state_dict()) == keys
    assert isinstance(model[0], nn.Linear) and 'in_features=24' in repr(model[0])
    x = torch.randn(2, 24)
    for clone in (copy.deepcopy(model), torch.load(_saved(model), weights_only=False)):
        assert type(clone[0]) is OneDnnLinear
        torch.testing.assert_close(clone(x), model(x))


def _saved(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return buf


def test_swapped_layers_are_still_packed_for_decoding():
    model = net()
    use_onednn_linears(model, min_weight_elements=0)
    packs = PackedLinears(min_weight_elements=0)
    with torch.no_grad():
        assert packs.refresh([model], rows=4) == 2


def test_the_functional_form_uses_the_kernel_only_when_a_gradient_is_recorded(monkeypatch):
    calls = []
    kernel = odl._inner_product
    monkeypatch.setattr(odl, '_inner_product', lambda *a: calls.append(1) or kernel(*a))
    x, w, b = torch.randn(2, 3, 7), torch.randn(5, 7), torch.randn(5)
    assert torch.equal(onednn_linear(x, w, b), F.linear(x, w, b))      # nothing requires grad
    assert calls == []
    y = onednn_linear(x, w.requires_grad_(True), b)
    assert calls == [1] and y.shape == (2, 3, 5) and y.requires_grad
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-6)


def test_policies_apply_the_option_and_check_it(monkeypatch):
    from test_llamagen import make_policy
    monkeypatch.setattr(odl, 'MIN_WEIGHT_ELEMENTS', 0)        # the tiny test model's layers
    on = make_policy(onednn_linears=True)
    off = make_policy(onednn_linears=False)
    n_on = sum(type(m) is OneDnnLinear for m in on.gpt.modules())
    assert n_on > 0 and n_on == sum(isinstance(m, nn.Linear) for m in on.gpt.modules())
    assert not any(type(m) is OneDnnLinear for m in off.modules())
    assert not any(type(m) is OneDnnLinear for m in on.vq.modules())   # frozen tokenizer untouched
    with pytest.raises(ValueError, match=r"LlamaGenPolicy onednn_linears='yes' must be True"):
        make_policy(onednn_linears='yes')


@pytest.mark.parametrize('vendor, expected', [('AuthenticAMD', True), ('GenuineIntel', False),
                                              ('', True)])
def test_auto_is_off_on_intel_cpus_only(monkeypatch, vendor, expected):
    """'auto' (the LlamaGen / VAR / MAR / VQGAN default): F.linear (MKL) measured faster on an
    Intel Xeon, oneDNN on an AMD EPYC."""
    from test_llamagen import make_policy
    monkeypatch.setattr(odl, 'MIN_WEIGHT_ELEMENTS', 0)
    monkeypatch.setattr(odl, 'cpu_vendor', lambda: vendor)
    assert odl.onednn_linears_auto() is expected
    assert odl.onednn_linears_auto('GenuineIntel') is False
    for policy in (make_policy(), make_policy(onednn_linears='auto')):
        assert any(type(m) is OneDnnLinear for m in policy.gpt.modules()) is expected


def test_cpuinfo_fields_are_read_by_exact_name(tmp_path, monkeypatch):
    """``cpu_vendor`` is ``/proc/cpuinfo``'s first ``vendor_id``: a field is matched by its
    whole name (``model`` is not ``model name``), tabs before the colon are allowed, and a
    missing field or file gives ''."""
    from vargo.core import run_report
    info = tmp_path / 'cpuinfo'
    info.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n'
                    'model\t\t: 17\nflags\t\t: fpu vme\n\n'
                    'processor\t: 1\nvendor_id\t: GenuineIntel\n')
    assert run_report.cpuinfo_field('vendor_id', str(info)) == 'AuthenticAMD'
    assert run_report.cpuinfo_field('model', str(info)) == '17'
    assert run_report.cpuinfo_field('model name', str(info)) == 'AMD EPYC 9R14'
    assert run_report.cpuinfo_field('microcode', str(info)) == ''
    assert run_report.cpuinfo_field('vendor_id', str(tmp_path / 'absent')) == ''
    monkeypatch.setattr(run_report, 'cpuinfo_field',
                        lambda name, path=str(info): {'vendor_id': 'GenuineIntel'}.get(name, ''))
    assert odl.cpu_vendor() == 'GenuineIntel' and odl.onednn_linears_auto() is False


def test_backward_reads_transposed_operands_in_place_for_non_square_layers():
    """The backward hands oneDNN ``W^T``, ``dy^T`` and ``x^T`` as strided views: on a layer
    whose in/out sizes and row count all differ, a wrongly oriented operand would fail the
    shape check or the values; a 2-row call (VAR's adaptive-LayerNorm shape) too."""
    torch.manual_seed(2)
    for rows in (2, 37):
        x = torch.randn(rows, 48, requires_grad=True)
        w = torch.randn(80, 48, requires_grad=True)
        b = torch.randn(80, requires_grad=True)
        g = torch.randn(rows, 80)
        ref = torch.autograd.grad(F.linear(x, w, b), (x, w, b), g)
        got = torch.autograd.grad(onednn_linear(x, w, b), (x, w, b), g)
        for r, o, name in zip(ref, got, ('x', 'weight', 'bias')):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5, msg=f'{name} at {rows} rows')


def test_a_call_with_another_bias_takes_the_kernel_in_training(monkeypatch):
    """VAR's query-key-value projection (``linear_with_bias``: the layer's weight, a bias built
    per call) runs on oneDNN when its layer is a OneDnnLinear, with the bias's gradient."""
    from vargo.components.modules.packed_linear import linear_with_bias
    calls = []
    kernel = odl._inner_product
    monkeypatch.setattr(odl, '_inner_product', lambda *a: calls.append(1) or kernel(*a))
    torch.manual_seed(3)
    layer = nn.Linear(16, 24, bias=False)
    bias = torch.randn(24, requires_grad=True)
    x = torch.randn(2, 5, 16)
    ref = torch.autograd.grad(F.linear(x, layer.weight, bias).square().sum(),
                              (layer.weight, bias))
    use_onednn_linears(layer, min_weight_elements=0)
    y = linear_with_bias(layer, x, bias)
    assert calls == [1]
    got = torch.autograd.grad(y.square().sum(), (layer.weight, bias))
    for r, o in zip(ref, got):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
    calls.clear()
    with torch.no_grad():
        linear_with_bias(layer, x, bias)
    assert calls == []
