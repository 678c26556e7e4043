import numpy as np
import pytest

from device_agent.contract.errors import InvalidInput, PayloadTooLarge
from device_agent.contract.manifest import TensorSpec
from device_agent.serve.validate import Validator

IMG = (TensorSpec("x", "float32", ("N", 1, 8, 8), "NCHW"),)
TWO = (TensorSpec("a", "float32", ("N", 3)), TensorSpec("k", "int64", ("N", 3)))


def err(validator, feeds) -> InvalidInput:
    with pytest.raises(InvalidInput) as e:
        validator(feeds)
    return e.value


def test_valid_array_passes_through_without_copy():
    x = np.zeros((2, 1, 8, 8), np.float32)
    out = Validator(IMG)({"x": x})
    assert out["x"] is x


def test_json_lists_convert_safely():
    v = Validator(TWO)
    out = v({"a": [[1, 2, 3]], "k": [[1, 2, 3]]})
    assert out["a"].dtype == np.float32 and out["k"].dtype == np.int64
    assert out["a"].tolist() == [[1.0, 2.0, 3.0]]
    # float64 from JSON narrows to float32
    assert v({"a": [[0.1, 0.2, 0.3]], "k": [[0, 0, 0]]})["a"].dtype == np.float32


def test_unknown_and_missing_names():
    e = err(Validator(IMG), {"y": [[1]]})
    assert e.kind == "unknown_input" and "unknown input 'y'; the model takes: x (float32 [N, 1, 8, 8])" in str(e)
    e = err(Validator(TWO), {"a": [[1, 2, 3]]})
    assert e.kind == "missing_input" and "missing input 'k' (int64 [N, 3])" in str(e)


def test_unsafe_dtypes_are_refused_with_the_reason():
    v = Validator(TWO)
    e = err(v, {"a": [[1, 2, 3]], "k": [[1.5, 2, 3]]})
    assert e.kind == "dtype" and e.input == "k" and e.expected == "int64" and e.given == "float64"
    assert "floats are not cast to integers" in str(e)
    e = err(v, {"a": np.ones((1, 3), np.int64) * (2**24 + 1), "k": [[1, 2, 3]]})
    assert "not exactly representable in float32" in str(e)
    e = err(v, {"a": [["a", "b", "c"]], "k": [[1, 2, 3]]})
    assert e.kind == "dtype" and "non-numeric values (strings)" in str(e)
    e = err(v, {"a": [[True, False, True]], "k": [[1, 2, 3]]})
    assert "booleans only convert to and from bool" in str(e)
    v16 = Validator((TensorSpec("h", "float16", ("N",)),))
    assert "values overflow float16" in str(err(v16, {"h": [1e6]}))
    v8 = Validator((TensorSpec("u", "uint8", ("N",)),))
    assert "values outside uint8's range [0, 255]" in str(err(v8, {"u": [256]}))
    assert v8({"u": [255]})["u"].dtype == np.uint8


def test_shape_errors_say_what_to_change():
    v = Validator(IMG)
    e = err(v, {"x": np.zeros((1, 8, 8), np.float32)})
    assert e.kind == "shape" and e.expected == "[N, 1, 8, 8]" and e.given == "[1, 8, 8]"
    assert "Add the batch axis" in str(e)
    e = err(v, {"x": np.zeros((2, 3, 8, 8), np.float32)})
    assert "axis 1 must be 1" in str(e)
    e = err(v, {"x": [[[[1, 2], [3]]]]})
    assert e.kind == "shape" and "ragged" in str(e)
    e = err(v, {"x": np.zeros((0, 1, 8, 8), np.float32)})
    assert "empty axis 0" in str(e)


def test_symbolic_dims_bind_across_inputs():
    e = err(Validator(TWO), {"a": np.zeros((2, 3), np.float32), "k": np.zeros((3, 3), np.int64)})
    assert e.kind == "shape" and "dimension 'N' is 2 for input 'a' but 3 for input 'k'" in str(e)


def test_limits_are_413():
    v = Validator(IMG, max_batch=4, max_elements=10_000)
    with pytest.raises(PayloadTooLarge, match=r"batch of 5; this agent accepts at most 4 \(\[api\] max_batch\)") as e:
        v({"x": np.zeros((5, 1, 8, 8), np.float32)})
    assert e.value.status == 413
    v = Validator(IMG, max_batch=1000, max_elements=100)
    with pytest.raises(PayloadTooLarge, match="128 tensor elements; this agent accepts at most 100"):
        v({"x": np.zeros((2, 1, 8, 8), np.float32)})


def test_non_finite_values_are_refused_and_located():
    x = np.zeros((1, 1, 8, 8), np.float32)
    x[0, 0, 2, 3] = np.nan
    x[0, 0, 5, 5] = np.inf
    e = err(Validator(IMG), {"x": x})
    assert e.kind == "nonfinite" and "1 NaN and 1 infinite value(s) (first at [0, 0, 2, 3])" in str(e)


def test_not_a_mapping():
    e = err(Validator(IMG), [1, 2])
    assert e.kind == "malformed" and "must be an object mapping input names" in str(e)


def test_huge_finite_values_are_not_mistaken_for_overflow():
    # the quick check sums the tensor; a sum that overflows must not reject finite inputs
    big = (TensorSpec("x", "float32", ("N", 1, 100, 100)),)
    x = np.full((2, 1, 100, 100), 3e38, np.float32)
    assert Validator(big)({"x": x})["x"] is x
    x[1, 0, 7, 7] = -np.inf
    assert err(Validator(big), {"x": x}).kind == "nonfinite"


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_small_tensor_with_one_non_finite_value_is_refused(dtype, bad):
    # small tensors are checked by a Python sum of their values, large ones by numpy: both refuse the same
    spec = (TensorSpec("x", dtype, ("N", 3)),)
    x = np.ones((2, 3), dtype)
    x[1, 2] = bad
    e = err(Validator(spec), {"x": x})
    assert e.kind == "nonfinite" and "(first at [1, 2])" in str(e)


def test_small_float64_values_whose_sum_overflows_are_accepted():
    # the Python sum of two 1e308 is inf: the elementwise check that follows must accept them
    spec = (TensorSpec("x", "float64", ("N", 2)),)
    x = np.array([[1e308, 1e308]])
    assert Validator(spec)({"x": x})["x"] is x


def test_the_fast_path_keeps_the_batch_and_element_limits():
    # an ndarray of the right dtype and dims takes the fast path; its limits still hold, with the full path's messages
    v = Validator(IMG, max_batch=4, max_elements=200)
    assert v({"x": np.zeros((3, 1, 8, 8), np.float32)})["x"].shape == (3, 1, 8, 8)
    with pytest.raises(PayloadTooLarge, match="256 tensor elements; this agent accepts at most 200"):
        v({"x": np.zeros((4, 1, 8, 8), np.float32)})  # within max_batch, over max_elements
    with pytest.raises(PayloadTooLarge, match="a batch of 5; this agent accepts at most 4"):
        Validator(IMG, max_batch=4)({"x": np.zeros((5, 1, 8, 8), np.float32)})
    assert err(v, {"x": np.zeros((0, 1, 8, 8), np.float32)}).kind == "shape"
    big_endian = np.zeros((1, 1, 8, 8), ">f4")  # another dtype object: the full path casts it
    assert v({"x": big_endian})["x"].dtype == np.float32


def test_json_floats_packed_as_float64_narrow_on_the_fast_path_with_the_full_paths_answers():
    # a JSON body's numbers arrive as one float64 array; a float32 model takes it cast, refusing what the cast would hide
    v = Validator(IMG, max_batch=4)
    x = np.linspace(-3, 3, 64).reshape(1, 1, 8, 8)
    out = v({"x": x})["x"]
    assert out.dtype == np.float32 and np.array_equal(out, x.astype(np.float32))
    too_big = x.copy()
    too_big[0, 0, 2, 3] = 1e39  # finite in float64, inf in float32
    e = err(v, {"x": too_big})
    assert e.kind == "dtype" and "values overflow float32 (largest is 3.40282e+38)" in str(e)
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[0, 0, 5, 1] = bad
        e = err(v, {"x": y})
        assert e.kind == "nonfinite" and "(first at [0, 0, 5, 1])" in str(e)
    with pytest.raises(PayloadTooLarge, match="a batch of 5; this agent accepts at most 4"):
        v({"x": np.zeros((5, 1, 8, 8))})
    assert err(v, {"x": np.zeros((1, 8, 8))}).kind == "shape"
    half = Validator((TensorSpec("x", "float16", ("N", 2)),))
    assert half({"x": np.array([[1.5, -2.0]], np.float32)})["x"].dtype == np.float16
    assert "values overflow float16" in str(err(half, {"x": np.array([[1e5, 0.0]], np.float32)}))
    assert Validator((TensorSpec("x", "float64", ("N", 2)),))({"x": np.array([[1.5, 2.0]], np.float32)})["x"].dtype == np.float64


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 75_263, 150_527])
def test_a_large_tensor_with_one_non_finite_value_is_refused_wherever_it_is(dtype, bad, where):
    # large tensors: float32 by their largest and smallest value, the others by a sum; all of them refuse the same
    spec = (TensorSpec("x", dtype, ("N", 3, 224, 224)),)
    x = np.random.default_rng(where).standard_normal((1, 3, 224, 224)).astype(dtype)
    x.reshape(-1)[where] = bad
    e = err(Validator(spec), {"x": x})
    assert e.kind == "nonfinite" and f"(first at {[int(i) for i in np.unravel_index(where, x.shape)]})" in str(e)
    x.reshape(-1)[where] = np.finfo(dtype).max  # the extremes are finite
    x.reshape(-1)[0 if where else 1] = np.finfo(dtype).min
    assert Validator(spec)({"x": x})["x"] is x
