"""herd's renderer for gpt-oss (spec 7.1, "built-in renderer"): a conversation as Harmony prompt text, ending
with `<|start|>assistant`.

The layout is the one in OpenAI's Harmony format guide and its reference renderer (the `openai-harmony` package):
a system message (identity, dates, `Reasoning:`, built-in tools, valid channels), a developer message
(`# Instructions`, then `# Tools` with the function tools as TypeScript-like declarations), then the turns. Where
that renderer, the official gpt-oss Jinja template and Ollama's gpt-oss template disagree, the choice and the
reason are given next to the code. Messages follow each other with nothing in between.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from herd.parsing.harmony import BUILTIN_TOOL_NAMES, harmony_function_names
from herd.types import Message, ToolCallIn, ToolDef

IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
CHANNELS_LINE = "# Valid channels: analysis, commentary, final. Channel must be included for every message."
FUNCTIONS_LINE = "Calls to these tools must go to the commentary channel: 'functions'."

# The built-in tools gpt-oss was trained with (harmony guide, "Built-in tools"). The texts are part of the prompt
# format: the model expects them word for word, so they are reproduced exactly.
_BROWSER_DESCRIPTION = (
    "Tool for browsing.\n"
    "The `cursor` appears in brackets before each browsing display: `[{cursor}]`.\n"
    "Cite information from the tool using the following format:\n"
    "`【{cursor}†L{line_start}(-L{line_end})?】`, for example: `【6†L9-L11】` or `【8†L3】`.\n"
    "Do not quote more than 10 words directly from the tool output.\n"
    "sources=web (default: web)"
)
_BROWSER_TOOLS: tuple[tuple[str, str, dict[str, object]], ...] = (
    (
        "search",
        "Searches for information related to `query` and displays `topn` results.",
        {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "topn": {"type": "number", "default": 10},
                "source": {"type": "string"},
            },
            "required": ["query"],
        },
    ),
    (
        "open",
        "Opens the link `id` from the page indicated by `cursor` starting at line number `loc`, showing "
        "`num_lines` lines.\n"
        "Valid link ids are displayed with the formatting: `【{id}†.*】`.\n"
        "If `cursor` is not provided, the most recent page is implied.\n"
        "If `id` is a string, it is treated as a fully qualified URL associated with `source`.\n"
        "If `loc` is not provided, the viewport will be positioned at the beginning of the document or centered "
        "on the most relevant passage, if available.\n"
        "Use this function without `id` to scroll to a new location of an opened page.",
        {
            "type": "object",
            "properties": {
                "id": {"type": ["number", "string"], "default": -1},
                "cursor": {"type": "number", "default": -1},
                "loc": {"type": "number", "default": -1},
                "num_lines": {"type": "number", "default": -1},
                "view_source": {"type": "boolean", "default": False},
                "source": {"type": "string"},
            },
        },
    ),
    (
        "find",
        "Finds exact matches of `pattern` in the current page, or the page given by `cursor`.",
        {
            "type": "object",
            "properties": {"pattern": {"type": "string"}, "cursor": {"type": "number", "default": -1}},
            "required": ["pattern"],
        },
    ),
)
_PYTHON_DESCRIPTION = (
    "Use this tool to execute Python code in your chain of thought. The code will not be shown to the user. This "
    "tool should be used for internal reasoning, but not for code that is intended to be visible to the user "
    "(e.g. when creating plots, tables, or files).\n\n"
    "When you send a message containing Python code to python, it will be executed in a stateful Jupyter notebook "
    "environment. python will respond with the output of the execution or time out after 120.0 seconds. The drive "
    "at '/mnt/data' can be used to save and persist user files. Internet access for this session is UNKNOWN. "
    "Depends on the cluster."
)


# ---- JSON Schema -> TypeScript-like declarations ------------------------------------------------------------
#
# The rules of openai-harmony's renderer (src/encoding.rs, json_schema_to_typescript), the one the format guide
# points to: descriptions as `//` comments above a field, `?` for fields not in `required`, string enums as unions
# of literals, `integer` as `number`, `nullable` as `| null`, defaults as a trailing `// default:` comment (quoted
# for plain strings, bare for enum members), `oneOf` as a `|` list one variant per line. Keywords it does not know
# (anyOf, $ref, ...) give `any`, as there. One deliberate difference: a multi-line description gets `// ` on every
# line, where the reference prefixes only the first and leaves the rest bare.


def _comment(text: str, indent: str) -> str:
    return "".join(f"{indent}// {line}\n" for line in text.split("\n"))


def _is_enum(schema: Mapping[str, object]) -> bool:
    values = schema.get("enum")
    return isinstance(values, list) and bool(values)


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _default_text(schema: Mapping[str, object]) -> str:
    default = schema["default"]
    if isinstance(default, str):
        return default if _is_enum(schema) else f'"{default}"'
    return _json(default)


def _nullable(schema: Mapping[str, object], ts: str) -> str:
    return f"{ts} | null" if schema.get("nullable") is True and "null" not in ts else ts


def _variant_comments(variant: Mapping[str, object], skip_description: bool, property_description: object) -> str:
    comments = []
    description = variant.get("description")
    if isinstance(description, str) and not skip_description and description != property_description:
        comments.append(description)
    if "default" in variant:
        comments.append("default: " + _default_text(variant))
    return f" // {' '.join(comments)}" if comments else ""


def schema_to_typescript(schema: object, indent: str = "") -> str:
    """A JSON Schema as the type gpt-oss reads in a tool declaration."""
    if not isinstance(schema, Mapping):
        return "any"
    one_of = schema.get("oneOf")
    if isinstance(one_of, list):
        out = []
        for variant in one_of:
            v = variant if isinstance(variant, Mapping) else {}
            ts = _nullable(v, schema_to_typescript(v, indent + "   "))
            out.append(f"\n{indent} | {ts}{_variant_comments(v, False, None)}")
        return "".join(out)
    kind = schema.get("type")
    if isinstance(kind, list):
        names = ["number" if t == "integer" else t for t in kind if isinstance(t, str)]
        if names:
            return " | ".join(names)
        return "any"
    if kind == "object" or (kind is None and isinstance(schema.get("properties"), Mapping)):
        return _object(schema, indent)
    if kind == "string":
        values = schema.get("enum")
        literals = [f'"{v}"' for v in values if isinstance(v, str)] if isinstance(values, list) else []
        return " | ".join(literals) if literals else "string"
    if kind in ("number", "integer"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "array":
        if "items" in schema:
            return schema_to_typescript(schema["items"], indent) + "[]"
        return "Array<any>"
    return "any"


def _object(schema: Mapping[str, object], indent: str) -> str:
    out = []
    description = schema.get("description")
    if isinstance(description, str):
        out.append(_comment(description, indent))
    out.append("{\n")
    properties = schema.get("properties")
    required_list = schema.get("required")
    required = set(required_list) if isinstance(required_list, list) else set()
    if isinstance(properties, Mapping):
        for key, value in properties.items():
            prop = value if isinstance(value, Mapping) else {}
            optional = "" if key in required else "?"
            title = prop.get("title")
            if isinstance(title, str):
                out.append(f"{indent}// {title}\n{indent}//\n")
            one_of = prop.get("oneOf")
            prop_description = prop.get("description")
            if not isinstance(one_of, list) and isinstance(prop_description, str):
                out.append(_comment(prop_description, indent))
            examples = prop.get("examples")
            if isinstance(examples, list) and examples:
                out.append(f"{indent}// Examples:\n")
                out.extend(f'{indent}// - "{e}"\n' for e in examples if isinstance(e, str))
            if isinstance(one_of, list):
                out.append(_one_of_property(key, optional, prop, one_of, indent))
                continue
            ts = _nullable(prop, schema_to_typescript(prop, indent + "    "))
            default = f" // default: {_default_text(prop)}" if "default" in prop else ""
            out.append(f"{indent}{key}{optional}: {ts},{default}\n")
    out.append(f"{indent}}}")
    return "".join(out)


def _one_of_property(
    key: str, optional: str, prop: Mapping[str, object], one_of: list[object], indent: str
) -> str:
    """A property whose schema is a `oneOf`: comments above it, then one `| variant` line per alternative."""
    out = []
    description = prop.get("description")
    first = one_of[0] if one_of and isinstance(one_of[0], Mapping) else {}
    # The property's description is not repeated when the first variant says the same.
    above = isinstance(description, str) and first.get("description") != description
    if above:
        out.append(_comment(str(description), indent))
    if "default" in prop:
        out.append(f"{indent}// default: {_default_text(prop)}\n")
    out.append(f"{indent}{key}{optional}:\n")
    for i, variant in enumerate(one_of):
        v = variant if isinstance(variant, Mapping) else {}
        ts = _nullable(v, schema_to_typescript(v, indent + "   "))
        out.append(f"{indent} | {ts}{_variant_comments(v, i == 0 and above, description)}\n")
    out.append(f"{indent},\n")
    return "".join(out)


def _declaration(name: str, description: str, parameters: Mapping[str, object]) -> str:
    """`// description` lines and `type name = (_: {...}) => any;`. A tool without properties is `() => any`, as
    the guide, the Jinja template and Ollama write it (the reference renderer would print an empty object)."""
    head = _comment(description, "") if description else ""
    properties = parameters.get("properties")
    if isinstance(properties, Mapping) and properties:
        return f"{head}type {name} = (_: {schema_to_typescript(parameters)}) => any;\n"
    return f"{head}type {name} = () => any;\n"


def _namespace(name: str, declarations: Sequence[str], description: str = "") -> str:
    head = _comment(description, "") if description else ""
    body = "\n".join(declarations)
    return f"## {name}\n\n{head}namespace {name} {{\n\n{body}\n}} // namespace {name}"


def render_tools_namespace(tools: Sequence[ToolDef]) -> str:
    """The `## functions` section of the developer message for the function tools (built-ins excluded)."""
    names = harmony_function_names([t.name for t in tools])
    declarations = [
        _declaration(names[t.name], t.description, t.parameters if isinstance(t.parameters, Mapping) else {})
        for t in tools
        if t.name not in BUILTIN_TOOL_NAMES
    ]
    return _namespace("functions", declarations)


def _builtin_section(browser: Sequence[str], python: bool) -> str:
    sections = ["# Tools"]
    if browser:
        declarations = [_declaration(n, d, p) for n, d, p in _BROWSER_TOOLS if n in browser]
        sections.append(_namespace("browser", declarations, _BROWSER_DESCRIPTION))
    if python:
        sections.append("## python\n\n" + _PYTHON_DESCRIPTION)
    return "\n\n".join(sections)


# ---- the conversation ---------------------------------------------------------------------------------------


def _system_message(reasoning: str | None, date: str, builtin: str, has_functions: bool) -> str:
    sections = [f"{IDENTITY}\nKnowledge cutoff: {KNOWLEDGE_CUTOFF}\nCurrent date: {date}"]
    if reasoning:
        sections.append(f"Reasoning: {reasoning}")
    if builtin:
        sections.append(builtin)
    sections.append(CHANNELS_LINE + ("\n" + FUNCTIONS_LINE if has_functions else ""))
    return "<|start|>system<|message|>" + "\n\n".join(sections) + "<|end|>"


def _arguments(args: object) -> str:
    # Compact JSON, as the model writes its own calls (the guide's examples, Ollama's Go encoding). The Jinja
    # template's `tojson` puts spaces after separators; a detail the model tolerates either way.
    return args if isinstance(args, str) else _json(args)


def _recipient(name: str, names: Mapping[str, str]) -> str:
    return name if name in BUILTIN_TOOL_NAMES else "functions." + names.get(name, name)


def _call(call: ToolCallIn, names: Mapping[str, str]) -> str:
    # Function calls go to commentary, built-in tools to analysis (harmony guide; Ollama's template). The header is
    # written the way gpt-oss writes it (channel, then recipient, then the constraint) rather than the Jinja
    # template's `to=` before the channel: history then looks like the model's own output.
    channel = "analysis" if call.name in BUILTIN_TOOL_NAMES else "commentary"
    recipient = _recipient(call.name, names)
    return (
        f"<|start|>assistant<|channel|>{channel} to={recipient} <|constrain|>json<|message|>"
        f"{_arguments(call.arguments)}<|call|>"
    )


def render_harmony(
    messages: Sequence[Message],
    tools: Sequence[ToolDef],
    reasoning: str | None,
    *,
    date: str,
    builtin_tools: Sequence[str] = (),
) -> str:
    """The Harmony prompt for a conversation, ending with `<|start|>assistant` for the model's answer.

    `reasoning` is "low", "medium" or "high" (see `herd.parsing.harmony.harmony_reasoning_effort`); "" or None
    leaves the `Reasoning:` line out, as Ollama does for `think:false`. `date` is the `Current date:` (YYYY-MM-DD).
    `builtin_tools` may hold "browser" and "python" (the Jinja template's kwarg of that name); tools named
    `browser.search`, `browser.open`, `browser.find` or `python` also turn on their built-in section, as in Ollama,
    and are then left out of `namespace functions`.

    Rules for the turns:
    - system and developer messages are the developer message's `# Instructions`, joined by a blank line (Ollama
      joins all system messages; the Jinja template takes only a first one);
    - an assistant message's `thinking` is rendered (analysis channel) only after the last user message, which
      keeps the reasoning of a tool-calling chain in progress and drops it from finished turns: the guide's rule,
      written as Ollama's template writes it;
    - an assistant message's content is its `final` message; when it comes with tool calls it is a preamble, the
      guide's commentary message without a recipient (which the parser returns as content again), where Ollama
      writes it as `final` and the Jinja template as `analysis`;
    - each tool call is its own message ending in `<|call|>` (the Jinja template keeps only the first);
    - a tool result is `<|start|>functions.NAME to=assistant<|channel|>commentary<|message|>...<|end|>` as in the
      guide, its content as it is (the Jinja template JSON-quotes it, Ollama leaves out the channel). The tool is
      `tool_name`, else the call with the same `tool_call_id`, else the next unanswered call of the last
      assistant message.
    """
    names = harmony_function_names([t.name for t in tools])
    functions = [t for t in tools if t.name not in BUILTIN_TOOL_NAMES]
    browser = [n for n, _, _ in _BROWSER_TOOLS if f"browser.{n}" in names]
    if "browser" in builtin_tools:
        browser = [n for n, _, _ in _BROWSER_TOOLS]
    python = "python" in builtin_tools or "python" in names
    builtin = _builtin_section(browser, python) if browser or python else ""

    out = [_system_message(reasoning, date, builtin, bool(functions))]
    instructions = [m.content for m in messages if m.role in ("system", "developer") and m.content]
    developer = []
    if instructions:
        developer += ["# Instructions", "\n\n".join(instructions)]
    if functions:
        developer += ["# Tools", render_tools_namespace(tools)]
    if developer:
        out.append("<|start|>developer<|message|>" + "\n\n".join(developer) + "<|end|>")

    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    by_id: dict[str, str] = {}
    pending: list[str] = []  # the last assistant message's calls that have no result yet
    for i, m in enumerate(messages):
        if m.role == "user":
            out.append(f"<|start|>user<|message|>{m.content}<|end|>")
        elif m.role == "assistant":
            if m.thinking and i > last_user:
                out.append(f"<|start|>assistant<|channel|>analysis<|message|>{m.thinking}<|end|>")
            if m.content:
                channel = "commentary" if m.tool_calls else "final"
                out.append(f"<|start|>assistant<|channel|>{channel}<|message|>{m.content}<|end|>")
            if m.tool_calls:
                pending = []
            for call in m.tool_calls:
                out.append(_call(call, names))
                pending.append(call.name)
                if call.id:
                    by_id[call.id] = call.name
        elif m.role == "tool":
            name = m.tool_name or by_id.get(m.tool_call_id, "") or (pending[0] if pending else "")
            if name in pending:
                pending.remove(name)
            author = _recipient(name, names) if name else "functions"
            out.append(f"<|start|>{author} to=assistant<|channel|>commentary<|message|>{m.content}<|end|>")
    out.append("<|start|>assistant")
    return "".join(out)
