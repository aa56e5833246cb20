"""Chat templates: render a model's Jinja chat template the way transformers does.

Templates come with checkpoints, i.e. they are untrusted code, so they run in jinja2's immutable sandbox (no
access to Python internals, no mutation of the messages, no loader for files) with the environment transformers
uses (`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`, a non-escaping `tojson`, `strftime_now`),
and see the special tokens (`bos_token`, `eos_token`, ...) as variables (only those the tokenizer has: an unset one
is undefined, not the string "None"). `{% generation %}...{% endgeneration %}` blocks, which templates use to mark
assistant text for transformers' `return_assistant_tokens_mask`, render their body. The sandbox bounds `range` but not
the size of strings a template builds (`'a' * 10**10`), nor its running time.
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox

from jaxrlhf.data.records import RESERVED_TEMPLATE_VARIABLES, template_kwargs_problem

Message = Mapping[str, Any]


class _GenerationBlocks(jinja2.ext.Extension):
  """`{% generation %}...{% endgeneration %}`: renders the body as is (transformers' AssistantTracker tag, which
  only records where the assistant's text lies when asked for an assistant mask)."""

  tags = {"generation"}

  def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
  # jinja's own tojson HTML-escapes; chat templates expect plain JSON.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def compile_chat_template(source: str) -> jinja2.Template:
  """Compiles a chat template source string (cached; templates are immutable)."""
  # An empty loader: {% include %} / {% import %} / {% extends %} of any name (a path, say) is TemplateNotFound.
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlocks, jinja2.ext.loopcontrols],
      loader=jinja2.DictLoader({}))
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  return env.from_string(source)


def render_chat(source: str, messages: Sequence[Message], add_generation_prompt: bool = False,
                special_tokens: Mapping[str, str | None] | None = None,
                tools: Sequence[Mapping[str, Any]] | None = None,
                template_kwargs: Mapping[str, Any] | None = None) -> str:
  """Renders `messages` with a chat template.

  Args:
    source: the Jinja template source (a tokenizer's `chat_template`).
    messages: dicts with at least "role" and "content".
    add_generation_prompt: append the header that starts the assistant's turn.
    special_tokens: template variables such as {"bos_token": "<s>", "eos_token": "</s>"}; a None value (a token
      the tokenizer lacks) leaves the variable undefined, as transformers does, so `{{ bos_token }}` renders "".
    tools: JSON schemas of the functions the model may call (the template's `tools` variable); None or empty
      renders without tools (transformers' and TRL's `tools or None`: some templates print a tools header for []).
    template_kwargs: more template variables (transformers' `**kwargs` of apply_chat_template, TRL's
      `chat_template_kwargs`), e.g. {"enable_thinking": False}; they override a special token of the same name.

  Returns:
    The rendered prompt text (not tokenized).

  Raises:
    ValueError: a message is not a dict with "role" and "content"; a template_kwargs name the renderer sets itself.
    jinja2.exceptions.TemplateError: the template rejects the conversation (via `raise_exception`).
  """
  for i, message in enumerate(messages):
    if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
      raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {message!r}")
  # Plain dicts and None-free values, as transformers passes them (templates test key presence).
  plain = [{k: v for k, v in m.items() if v is not None} for m in messages]
  # transformers passes only the special tokens that are set; a None would render as the text "None".
  variables = {k: v for k, v in (special_tokens or {}).items() if v is not None}
  if template_kwargs:
    reserved = sorted(set(template_kwargs) & RESERVED_TEMPLATE_VARIABLES)
    if reserved:
      raise ValueError(f"chat template arguments {reserved} are set by the renderer itself; not settable")
    variables.update(template_kwargs)
  return compile_chat_template(source).render(
      messages=plain, add_generation_prompt=add_generation_prompt, tools=[dict(t) for t in tools] if tools else None,
      documents=None, **variables)


def _jinja_literal(value: Any) -> str:
  """`value`, a JSON value (checked by `template_kwargs_problem`: finite numbers, str keys), as a Jinja expression."""
  if value is None:
    return "none"
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (int, float)):
    return repr(value)
  if isinstance(value, str):
    return json.dumps(value)  # A JSON string is a valid Jinja string literal (same escapes).
  if isinstance(value, (list, tuple)):
    return "[" + ", ".join(_jinja_literal(v) for v in value) + "]"
  return "{" + ", ".join(f"{json.dumps(k)}: {_jinja_literal(v)}" for k, v in value.items()) + "}"


def template_with_defaults(source: str, defaults: Mapping[str, Any]) -> str:
  """`source` with `defaults` (chat template arguments) as the values of variables the caller leaves unset: a
  template that renders as if each call passed them, unless the call passes its own value (per-row arguments). So
  a saved tokenizer carries a run's arguments, and transformers renders the same text from it.

  Raises:
    ValueError: `template_kwargs_problem`.
  """
  problem = template_kwargs_problem(defaults)
  if problem:
    raise ValueError(problem)
  # An `if` does not open a Jinja scope, so the `set` is seen by the rest of the template.
  head = "".join(f"{{%- if {name} is not defined %}}{{%- set {name} = {_jinja_literal(value)} %}}{{%- endif %}}"
                 for name, value in defaults.items())
  # The newline after the last tag is the one trim_blocks removes, so the template's own first line is unchanged.
  return head + "\n" + source if head else source


def template_supports_system_role(source: str, special_tokens: Mapping[str, str | None] | None = None) -> bool:
  """Whether a template accepts a system message and shows its content.

  Templates that reject a system turn (raise) or silently drop it both count as not supporting it.
  """
  compile_chat_template(source)  # A syntax error is a broken template, not a missing feature: let it raise.
  marker = "SYSTEM-ROLE-PROBE-7f3a"
  messages = [{"role": "system", "content": marker}, {"role": "user", "content": "hi"}]
  try:
    rendered = render_chat(source, messages, add_generation_prompt=True, special_tokens=special_tokens)
  except jinja2.exceptions.TemplateError:
    return False
  return marker in rendered
