"""Malformed model files: random bytes, truncations and bogus or mutated headers in safetensors, GGUF and
tokenizer files give one error type (ModelFileError) naming the file, never a foreign exception, a hang or a
large allocation. Chat templates from a model file render in a sandbox that cannot reach files or Python objects.
"""

import contextlib
import json
import signal
import struct
import tracemalloc

import gguf
import jinja2
import ml_dtypes
import numpy as np
import pytest
import tokenizers
from hypothesis import HealthCheck, example, given, settings, strategies as st
from tokenizers import models, pre_tokenizers

from jaxrlhf.models import chat
from jaxrlhf.models import gguf as gguf_io
from jaxrlhf.models import hf
from jaxrlhf.models.errors import ModelFileError
from jaxrlhf.models.tokenizer import load_tokenizer

# Per-example budget: the readers take milliseconds on these tiny files; the deadline leaves room for a slow
# 2-core CI, the alarm turns a hang into a failure, the tracemalloc cap catches a large allocation.
FUZZ = settings(max_examples=60, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])
HANG_S = 20
MAX_ALLOC_BYTES = 64 << 20

# A tiny llama + byte-level BPE vocabulary: D=8, 2 heads of 4, F=16, V=8, one layer.
D, N, H, F, V = 8, 2, 4, 16, 8
TOKENS = ["<s>", "</s>", "h", "i", "Ġ", "hi", "Ġhi", "!"]
MERGES = ["h i", "Ġ hi"]
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}"


@contextlib.contextmanager
def _bounded():
  """Fails the example on a hang (SIGALRM) or a Python/numpy allocation peak above MAX_ALLOC_BYTES."""

  def on_alarm(*_):
    raise TimeoutError(f"reader still running after {HANG_S} s")

  previous = signal.signal(signal.SIGALRM, on_alarm)
  signal.alarm(HANG_S)
  tracemalloc.start()
  try:
    yield
    peak = tracemalloc.get_traced_memory()[1]
    assert peak < MAX_ALLOC_BYTES, f"allocated {peak} bytes"
  finally:
    tracemalloc.stop()
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _read_all_safetensors(path):
  tensors = hf.SafetensorsFile(path)
  for name in tensors:
    np.asarray(tensors[name]).sum()  # Every byte range is readable.


def _read_all_gguf(path):
  gguf_io.read_metadata(path)
  gguf_io.read_gguf(path)


def _expect_ok_or_model_file_error(read, path, must_fail=False):
  """Runs `read(path)`: it either succeeds or raises ModelFileError whose message names `path`."""
  with _bounded():
    try:
      read(path)
    except ModelFileError as e:
      assert str(path) in str(e) and e.problem, str(e)
      return e
  assert not must_fail, f"{path} was read without an error"
  return None


# ---------------------------------------------------------------------------------------------- valid files
def _write_safetensors(path):
  rng = np.random.default_rng(0)
  hf.write_safetensors(path, {
      "a": rng.normal(size=(3, 4)).astype(np.float32),
      "b": rng.normal(size=(5,)).astype(ml_dtypes.bfloat16),
      "c": np.arange(4, dtype=np.int64).reshape(2, 2),
  })
  return path


def _write_gguf(path):
  """A tiny llama GGUF with every metadata kind (ints, floats, strings, string and int arrays) and tensors."""
  rng = np.random.default_rng(0)
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(1)
  writer.add_context_length(16)
  writer.add_embedding_length(D)
  writer.add_feed_forward_length(F)
  writer.add_head_count(N)
  writer.add_head_count_kv(N)
  writer.add_layer_norm_rms_eps(1e-6)
  writer.add_vocab_size(V)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("default")
  writer.add_token_list(TOKENS)
  writer.add_token_types([3, 3, 1, 1, 1, 1, 1, 1])
  writer.add_token_merges(MERGES)
  writer.add_bos_token_id(0)
  writer.add_eos_token_id(1)
  writer.add_chat_template(TEMPLATE)
  writer.add_key_value("test.bytes", [1, 2, 3], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT8)
  shapes = {"token_embd.weight": (V, D), "output_norm.weight": (D,), "blk.0.attn_norm.weight": (D,),
            "blk.0.attn_q.weight": (N * H, D), "blk.0.attn_k.weight": (N * H, D),
            "blk.0.attn_v.weight": (N * H, D), "blk.0.attn_output.weight": (D, N * H),
            "blk.0.ffn_norm.weight": (D,), "blk.0.ffn_gate.weight": (F, D), "blk.0.ffn_up.weight": (F, D),
            "blk.0.ffn_down.weight": (D, F)}
  for name, shape in shapes.items():
    writer.add_tensor(name, rng.normal(size=shape).astype(np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def _tokenizer_json():
  backend = tokenizers.Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(TOKENS)},
                                            merges=[tuple(m.split()) for m in MERGES]))
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  return backend.to_str()


def _write_tokenizer_folder(folder, tokenizer_json=None, config=None):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "tokenizer.json").write_text(_tokenizer_json() if tokenizer_json is None else tokenizer_json)
  config = {"eos_token": "</s>", "bos_token": "<s>", "chat_template": TEMPLATE} if config is None else config
  (folder / "tokenizer_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
  return folder


class _Valid(dict):
  """The valid files' bytes and GGUF offsets (a short repr keeps hypothesis' failure reports readable)."""

  def __repr__(self):
    return "valid"


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
  root = tmp_path_factory.mktemp("valid")
  files = _Valid(safetensors=_write_safetensors(root / "model.safetensors").read_bytes(),
                 gguf=_write_gguf(root / "tiny.gguf").read_bytes())
  _read_all_safetensors(root / "model.safetensors")
  _read_all_gguf(root / "tiny.gguf")
  tok = load_tokenizer(root / "tiny.gguf")
  assert tok.encode("hi hi!") == [5, 6, 7] and tok.eos_id == 1
  assert load_tokenizer(_write_tokenizer_folder(root / "tok")).encode("hi hi!") == [5, 6, 7]
  reader = gguf.GGUFReader(root / "tiny.gguf")
  files["gguf_data_end"] = max(t.data_offset + t.n_bytes for t in reader.tensors)
  files["gguf_header_end"] = reader.data_offset
  return files


def _write(tmp_path, name, data):
  path = tmp_path / name
  path.write_bytes(data)
  return path


# ---------------------------------------------------------------------------------------------- properties
@FUZZ
@given(data=st.binary(max_size=3000), prefix=st.sampled_from([b"", b"GGUF\x03\x00\x00\x00", b"GGUF\x02\x00\x00\x00",
                                                              struct.pack("<Q", 40), b'{"model": {']))
def test_random_bytes(tmp_path, data, prefix):
  data = prefix + data
  _expect_ok_or_model_file_error(_read_all_safetensors, _write(tmp_path, "model.safetensors", data))
  gguf_file = _write(tmp_path, "random.gguf", data)
  _expect_ok_or_model_file_error(_read_all_gguf, gguf_file, must_fail=True)
  _expect_ok_or_model_file_error(load_tokenizer, gguf_file, must_fail=True)
  folder = tmp_path / "tok"
  _write_tokenizer_folder(folder, tokenizer_json=data.decode("utf-8", "replace"))
  _expect_ok_or_model_file_error(load_tokenizer, folder)


@FUZZ
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files(tmp_path, valid, fraction):
  st_bytes = valid["safetensors"]
  _expect_ok_or_model_file_error(_read_all_safetensors,
                                 _write(tmp_path, "model.safetensors", st_bytes[:int(fraction * len(st_bytes))]),
                                 must_fail=True)
  cut = int(fraction * len(valid["gguf"]))
  gguf_file = _write(tmp_path, "cut.gguf", valid["gguf"][:cut])
  _expect_ok_or_model_file_error(_read_all_gguf, gguf_file, must_fail=cut < valid["gguf_data_end"])
  _expect_ok_or_model_file_error(load_tokenizer, gguf_file, must_fail=cut < valid["gguf_header_end"])
  text = _tokenizer_json()
  folder = _write_tokenizer_folder(tmp_path / "tok", tokenizer_json=text[:int(fraction * len(text))])
  _expect_ok_or_model_file_error(load_tokenizer, folder, must_fail=True)


_HUGE = st.sampled_from([2**31, 2**32 - 1, 2**40, 2**60, 2**63, 2**64 - 1])
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8) | _HUGE,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8)


@FUZZ
@example(field="header_len", value=2**60)
@example(field="data_offsets", value=[0, 2**60])
@example(field="shape", value=[2**40, 2**40])
@example(field="dtype", value="F8_E4M3")
@given(field=st.sampled_from(["header_len", "dtype", "shape", "data_offsets", "entry", "header"]),
       value=_JSON_VALUES | _HUGE)
def test_safetensors_header_mutations(tmp_path, valid, field, value):
  raw = valid["safetensors"]
  header_len = struct.unpack_from("<Q", raw)[0]
  header = json.loads(raw[8:8 + header_len])
  if field == "header_len":
    mutated = struct.pack("<Q", value % 2**64) + raw[8:] if isinstance(value, int) else raw[8:]
  else:
    if field == "entry":
      header["a"] = value
    elif field == "header":
      header = value
    else:
      header["b"][field] = value
    text = json.dumps(header).encode()
    mutated = struct.pack("<Q", len(text)) + text + raw[8 + header_len:]
  path = _write(tmp_path, "model.safetensors", mutated)
  error = _expect_ok_or_model_file_error(_read_all_safetensors, path)
  if field == "header_len" and value == 2**60:
    assert error is not None and "header length 1152921504606846976 exceeds" in str(error)


def _gguf_header_field_offsets(raw):
  """Byte offsets of the 8-byte counts and lengths in a GGUF header (where a bogus value does the most harm):
  tensor and KV counts, every string and array length, every tensor dimension and data offset."""
  offsets, pos = [8, 16], 24
  tensor_count, kv_count = struct.unpack_from("<QQ", raw, 8)

  def string():
    nonlocal pos
    offsets.append(pos)
    pos += 8 + struct.unpack_from("<Q", raw, pos)[0]

  def value(kind):
    nonlocal pos
    if kind == gguf.GGUFValueType.STRING:
      string()
    elif kind == gguf.GGUFValueType.ARRAY:
      item, n = struct.unpack_from("<IQ", raw, pos)
      offsets.append(pos + 4)
      pos += 12
      for _ in range(n):
        value(item)
    else:
      pos += np.dtype(gguf.GGUFReader.gguf_scalar_to_np[kind]).itemsize

  for _ in range(kv_count):
    string()
    kind = struct.unpack_from("<I", raw, pos)[0]
    pos += 4
    value(kind)
  for _ in range(tensor_count):
    string()
    n_dims = struct.unpack_from("<I", raw, pos)[0]
    pos += 4
    offsets.extend(pos + 8 * i for i in range(n_dims))
    pos += 8 * n_dims + 4
    offsets.append(pos)
    pos += 8
  return offsets


@FUZZ
@example(which=0, value=2**40)  # Tensor count.
@example(which=1, value=2**40)  # Metadata count.
@given(which=st.integers(0, 10**6), value=_HUGE | st.integers(0, 2**64 - 1) | st.integers(0, 64))
def test_gguf_header_count_and_length_mutations(tmp_path, valid, which, value):
  raw = bytearray(valid["gguf"])
  offsets = _gguf_header_field_offsets(bytes(raw))
  struct.pack_into("<Q", raw, offsets[which % len(offsets)], value)
  path = _write(tmp_path, "mutated.gguf", bytes(raw))
  _expect_ok_or_model_file_error(_read_all_gguf, path)
  _expect_ok_or_model_file_error(load_tokenizer, path)


@FUZZ
@given(positions=st.lists(st.integers(0, 10**6), min_size=1, max_size=8), byte=st.integers(0, 255))
def test_gguf_header_byte_mutations(tmp_path, valid, positions, byte):
  raw = bytearray(valid["gguf"])
  for p in positions:
    raw[p % valid["gguf_header_end"]] = byte
  path = _write(tmp_path, "mutated.gguf", bytes(raw))
  _expect_ok_or_model_file_error(_read_all_gguf, path)
  _expect_ok_or_model_file_error(load_tokenizer, path)


@FUZZ
@given(key=st.sampled_from(["model", "pre_tokenizer", "added_tokens", "decoder", "normalizer", "version",
                            "post_processor"]),
       inner=st.sampled_from([None, "vocab", "merges", "type"]), value=_JSON_VALUES,
       config=st.none() | _JSON_VALUES)
def test_tokenizer_json_and_config_mutations(tmp_path, key, inner, value, config):
  document = json.loads(_tokenizer_json())
  if inner is not None and isinstance(document.get(key), dict):
    document[key][inner] = value
  else:
    document[key] = value
  folder = _write_tokenizer_folder(tmp_path / "tok", tokenizer_json=json.dumps(document),
                                   config=None if config is None else json.dumps(config))
  _expect_ok_or_model_file_error(load_tokenizer, folder)


@FUZZ
@given(key=st.sampled_from(["tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                            "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.pre",
                            "tokenizer.chat_template", "llama.block_count", "llama.embedding_length"]),
       value=st.one_of(st.integers(-2**31, 2**32 - 1), st.text(max_size=10), st.booleans(),
                       st.lists(st.integers(0, 255), min_size=1, max_size=5),
                       st.lists(st.text(max_size=5), min_size=1, max_size=5)))
def test_gguf_metadata_of_the_wrong_type(tmp_path, key, value):
  """Well-formed GGUF files whose metadata holds the wrong type or an out-of-range value."""
  path = _write_gguf(tmp_path / "wrong.gguf")
  reader_fields = gguf_io.read_metadata(path)
  writer = gguf.GGUFWriter(str(tmp_path / "rewritten.gguf"), "llama")
  for name, field_value in reader_fields.items():
    if name.startswith("GGUF.") or name == "general.architecture":
      continue
    writer.add_key_value(name, value if name == key else field_value, _gguf_type(value if name == key
                                                                                 else field_value))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.close()
  _expect_ok_or_model_file_error(load_tokenizer, tmp_path / "rewritten.gguf")
  _expect_ok_or_model_file_error(gguf_io.read_gguf, tmp_path / "rewritten.gguf", must_fail=True)  # No tensors.


def _gguf_type(value):
  if isinstance(value, bool):
    return gguf.GGUFValueType.BOOL
  if isinstance(value, int):
    return gguf.GGUFValueType.INT64 if value < 0 else gguf.GGUFValueType.UINT32 if value < 2**32 else \
        gguf.GGUFValueType.UINT64
  if isinstance(value, float):
    return gguf.GGUFValueType.FLOAT32
  if isinstance(value, str):
    return gguf.GGUFValueType.STRING
  return gguf.GGUFValueType.ARRAY


# ---------------------------------------------------------------------------------------------- named cases
def test_the_reported_cases_name_the_file_and_problem(tmp_path, valid):
  """The issue's examples: a truncated model.safetensors, a bogus header, a corrupt GGUF."""
  cut = _write(tmp_path, "model.safetensors", valid["safetensors"][:-5])
  with pytest.raises(ModelFileError, match=r"model\.safetensors: tensor 'c': data_offsets .* truncated"):
    hf.SafetensorsFile(cut)
  bogus = _write(tmp_path, "bogus.safetensors", struct.pack("<Q", 2**63) + valid["safetensors"][8:])
  with pytest.raises(ModelFileError, match=r"bogus\.safetensors: header length 9223372036854775808 exceeds"):
    hf.SafetensorsFile(bogus)
  (tmp_path / "folder").mkdir()
  (tmp_path / "folder" / "config.json").write_text("{\"model_type\": ")
  (tmp_path / "folder" / "model.safetensors").write_bytes(valid["safetensors"])
  with pytest.raises(ModelFileError, match=r"config\.json: malformed config\.json \(JSONDecodeError"):
    hf.read_hf_folder(tmp_path / "folder")
  raw = bytearray(valid["gguf"])
  struct.pack_into("<Q", raw, 8, 2**40)
  with pytest.raises(ModelFileError, match=r"count\.gguf: GGUF header claims 1099511627776 tensors"):
    gguf_io.read_gguf(_write(tmp_path, "count.gguf", bytes(raw)))
  with pytest.raises(ModelFileError, match=r"cut\.gguf: GGUF tensor 'blk\.0\.ffn_down\.weight' .*\(truncated"):
    gguf_io.read_gguf(_write(tmp_path, "cut.gguf", valid["gguf"][:valid["gguf_data_end"] - 1]))
  # A byte array's length of 2**40: the gguf package loops over it for ever (reads past the end return nothing).
  raw = bytearray(valid["gguf"])
  at = bytes(raw).index(b"test.bytes") + len("test.bytes")
  struct.pack_into("<Q", raw, at + 4 + 4, 2**40)  # After the value type and the item type.
  with _bounded(), pytest.raises(ModelFileError, match=r"loop\.gguf: GGUF metadata 'test\.bytes' \(1099511627776"):
    load_tokenizer(_write(tmp_path, "loop.gguf", bytes(raw)))
  with pytest.raises(ModelFileError, match=r"empty\.gguf: not a GGUF file: 0 bytes"):
    gguf_io.read_metadata(_write(tmp_path, "empty.gguf", b""))
  folder = _write_tokenizer_folder(tmp_path / "tok", tokenizer_json="{\"model\": 3}")
  with pytest.raises(ModelFileError, match=r"tokenizer\.json: malformed tokenizer\.json"):
    load_tokenizer(folder)
  folder = _write_tokenizer_folder(tmp_path / "tok2", config="[1, 2]")
  with pytest.raises(ModelFileError, match=r"tokenizer_config\.json: expected a JSON object, got a JSON list"):
    load_tokenizer(folder)


def test_huge_block_count_is_rejected_before_looping_over_layers(tmp_path):
  path = _write_gguf(tmp_path / "tiny.gguf")
  raw = bytearray(path.read_bytes())
  at = bytes(raw).index(b"llama.block_count") + len("llama.block_count") + 4  # After the value type.
  struct.pack_into("<I", raw, at, 2**31)
  with _bounded(), pytest.raises(ModelFileError, match=r"block_count 2147483648 does not fit the 11 tensors"):
    gguf_io.read_gguf(_write(tmp_path, "layers.gguf", bytes(raw)))


# ---------------------------------------------------------------------------------------------- chat sandbox
_ESCAPES = {
    "class_mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "function_globals": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "cycler_init": "{{ cycler.__init__.__globals__.os.listdir('/') }}",
    "namespace_init": "{{ namespace.__init__.__globals__ }}",
    "template_self": "{{ self.__init__.__globals__ }}",
    "mutate_messages": "{{ messages.append({'role': 'x'}) }}",
    "mutate_dict": "{% set d = {} %}{{ d.update({'a': 1}) }}",
    "include_file": "{% include '/etc/passwd' %}",
    "import_module": "{% import 'os' as os %}{{ os.listdir('/') }}",
    "extends_file": "{% extends '/etc/hostname' %}",
    "open_builtin": "{{ open('/etc/passwd').read() }}",
    "format_attribute": "{{ '{0.__class__.__init__.__globals__}'.format(messages) }}",
    "huge_range": "{{ range(10**9)|list|length }}",
}
# Reads of unsafe attributes that the sandbox turns into an empty (undefined) value instead of raising.
_SILENT = {
    "raise_exception_globals": "{{ raise_exception.__globals__ }}",
    "strftime_globals": "{{ strftime_now.__globals__ }}",
    "attr_filter": "{{ messages|attr('__class__') }}",
    "config": "{{ config }}{{ request }}{{ os }}",
}


def _tokenizer_with_template(tmp_path, template):
  folder = tmp_path / "tok"
  _write_tokenizer_folder(folder, config={"eos_token": "</s>", "chat_template": template})
  return load_tokenizer(folder)


@pytest.mark.parametrize("name", sorted(_ESCAPES))
def test_chat_template_cannot_reach_files_or_python_objects(tmp_path, name):
  tok = _tokenizer_with_template(tmp_path, _ESCAPES[name])
  expected = OverflowError if name == "huge_range" else jinja2.exceptions.TemplateError
  with pytest.raises(expected) as e:
    tok.apply_chat_template([{"role": "user", "content": "hi"}])
  assert "root:" not in str(e.value)


@pytest.mark.parametrize("name", sorted(_SILENT))
def test_chat_template_reads_of_internals_render_empty(tmp_path, name):
  tok = _tokenizer_with_template(tmp_path, "[" + _SILENT[name] + "]")
  assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "[]"


def test_chat_template_from_a_gguf_file_renders_in_the_sandbox(tmp_path):
  tok = load_tokenizer(_write_gguf(tmp_path / "tiny.gguf"))
  assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<user>hi</s>"
  assert isinstance(chat.compile_chat_template(TEMPLATE).environment, jinja2.sandbox.ImmutableSandboxedEnvironment)
