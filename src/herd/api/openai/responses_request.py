"""OpenAI's Responses API (`POST /v1/responses`): the request translated onto the native chat turn.

A request becomes a `ChatTurn` the way chat completions does (`translate.py`: the same images, reasoning effort,
tool_choice and model-name rules), with the Responses shapes: `input` items instead of messages, flat function
tools (and those grouped in a `namespace` tool), `text.format` instead of `response_format`, `max_output_tokens`.
`previous_response_id` prepends the stored conversation (`services/response_store.py`); `instructions` lead the
prompt but are not carried into a follow-up, as on OpenAI. The answer is encoded by `responses_stream.py`.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from herd.api.ollama import wire as native
from herd.api.openai import responses_wire as wire
from herd.api.openai.responses_wire import InvalidParam
from herd.api.openai.translate import (
    EFFORT,
    EFFORT_ERROR,
    image_bytes,
    is_remote,
    model_name,
    no_constant,
    tool_choice,
)
from herd.errors import LimitExceeded
from herd.types import ChatTurn, Message, ToolCallIn, ToolDef

# `include` values herd can honour: it has no encrypted reasoning (the reasoning text is in the item's content
# instead), and logprobs come from the sampler.
INCLUDE_ENCRYPTED = "reasoning.encrypted_content"
INCLUDE_LOGPROBS = "message.output_text.logprobs"
_INCLUDABLE = (INCLUDE_ENCRYPTED, INCLUDE_LOGPROBS)
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_SUMMARY = (None, "auto", "concise", "detailed")
_VERBOSITY = (None, "low", "medium", "high")
_METADATA_KEYS, _METADATA_KEY_LEN, _METADATA_VALUE_LEN = 16, 64, 512


def new_id(prefix: str) -> str:
    """OpenAI's ids: a prefix and 48 hex digits (`resp_...`, `msg_...`, `rs_...`, `fc_...`, `call_...`)."""
    return f"{prefix}_{secrets.token_hex(24)}"


# ---- request ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponsePlan:
    """A request, translated: the turn to run, the conversation to store with its answer, and what to echo."""

    turn: ChatTurn
    history: tuple[Message, ...]  # earlier turns and this input, without the instructions
    echo: wire.Echo
    store: bool = True
    logprobs: bool = False
    namespaces: dict[str, str] = field(default_factory=dict)  # function name -> its `namespace` tool's name


def _image_parts(req: wire.ResponsesRequest) -> list[dict[str, Any]]:
    """The input_image parts of the input items (messages and function outputs), in order."""
    out: list[dict[str, Any]] = []
    for item in req.input if isinstance(req.input, list) else ():
        parts = item.get("content") if item.get("type", "message") == "message" else item.get("output")
        if isinstance(parts, list):
            out.extend(p for p in parts if isinstance(p, dict) and p.get("type") == "input_image")
    return out


async def fetch_remote_images(req: wire.ResponsesRequest, max_bytes: int, max_images: int) -> None:
    """With HERD_ALLOW_IMAGE_URLS=1: every http(s) image_url fetched now and put back as a data URL, so the
    translation sees only inline images (chat completions does the same). Bounded by the request's image limits."""
    from herd.image_fetch import fetch_image

    parts = _image_parts(req)
    if len(parts) > max_images:
        raise LimitExceeded(f"{len(parts)} images exceed the limit of {max_images} per request")
    for part in parts:
        url = part.get("image_url")
        if is_remote(url):
            data = await fetch_image(str(url), max_bytes)
            part["image_url"] = "data:;base64," + base64.b64encode(data).decode()


def _unsupported(req: wire.ResponsesRequest) -> None:
    """Fields herd cannot honour are refused by name rather than silently ignored."""
    if req.background:
        raise InvalidParam("background mode is not supported by herd: send the request without 'background'.",
                           "background")
    if req.conversation is not None:
        raise InvalidParam("conversations are not supported by herd: use 'previous_response_id' or send the "
                           "conversation as 'input' items.", "conversation")
    if req.prompt is not None:
        raise InvalidParam("prompt templates are not supported by herd: send 'instructions' and 'input'.",
                           "prompt")
    if req.max_tool_calls is not None:
        raise InvalidParam("'max_tool_calls' is not supported by herd (use 'parallel_tool_calls': false for at "
                           "most one call).", "max_tool_calls")
    for i, value in enumerate(req.include or ()):
        if value not in _INCLUDABLE:
            raise InvalidParam(f"Invalid value for 'include[{i}]': herd cannot include '{value}' (supported: "
                               f"{', '.join(repr(v) for v in _INCLUDABLE)}).", f"include[{i}]")
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= 20:
        raise InvalidParam("Invalid 'top_logprobs': must be between 0 and 20.", "top_logprobs")
    if req.truncation not in (None, "auto", "disabled"):
        raise InvalidParam(f"Invalid value for 'truncation': '{req.truncation}' (must be 'auto' or 'disabled').",
                           "truncation")
    if req.max_output_tokens is not None and req.max_output_tokens < 1:
        raise InvalidParam("Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 1, but "
                           f"got {req.max_output_tokens} instead.", "max_output_tokens")
    meta = req.metadata or {}
    if len(meta) > _METADATA_KEYS or any(len(k) > _METADATA_KEY_LEN or len(v) > _METADATA_VALUE_LEN
                                         for k, v in meta.items()):
        raise InvalidParam(f"Invalid 'metadata': at most {_METADATA_KEYS} pairs, keys up to {_METADATA_KEY_LEN} "
                           f"and values up to {_METADATA_VALUE_LEN} characters.", "metadata")


def _parts(parts: str | list[dict[str, Any]], path: str) -> tuple[str, tuple[bytes, ...]]:
    """Content parts -> (text, images). Text parts are joined as they are (Ollama's responses layer joins them
    the same way); an image is an inline data URL (remote ones were fetched before, or are refused)."""
    if isinstance(parts, str):
        return parts, ()
    text: list[str] = []
    images: list[bytes] = []
    for j, part in enumerate(parts):
        where = f"{path}[{j}]"
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            value = part.get("text")
            if not isinstance(value, str):
                raise InvalidParam(f"Missing required parameter: '{where}.text'.", f"{where}.text")
            text.append(value)
        elif kind == "refusal":
            value = part.get("refusal")
            if not isinstance(value, str):
                raise InvalidParam(f"Missing required parameter: '{where}.refusal'.", f"{where}.refusal")
            text.append(value)
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise InvalidParam(f"herd needs an inline 'image_url' (a data URL) in '{where}': file ids are not "
                                   "supported.", f"{where}.image_url")
            images.append(image_bytes(url))  # http(s) URLs: IMAGE_URLS_REFUSED unless fetched above
        elif kind is None:
            raise InvalidParam(f"Missing required parameter: '{where}.type'.", f"{where}.type")
        else:
            raise InvalidParam(f"Content parts of type '{kind}' are not supported by herd ('{where}').",
                               f"{where}.type")
    return "".join(text), tuple(images)


def _arguments(text: str, path: str) -> dict[str, object]:
    try:
        args = json.loads(text, parse_constant=no_constant) if text.strip() else {}
    except (ValueError, RecursionError):
        raise InvalidParam(f"Invalid '{path}.arguments': not valid JSON.", f"{path}.arguments") from None
    if not isinstance(args, dict):
        raise InvalidParam(f"Invalid '{path}.arguments': expected a JSON object.", f"{path}.arguments")
    return args


def input_messages(items: str | list[dict[str, Any]] | None, earlier: tuple[Message, ...] = ()
                   ) -> tuple[Message, ...]:
    """`input` -> messages. A string is one user message. Items: messages (with or without `"type":"message"`);
    `function_call`s become the assistant's tool calls (consecutive ones, and one that follows the assistant's
    text, in one message, as the model wrote them); `function_call_output` is a tool message named after its call
    (found by call_id here or in `earlier`); `reasoning` is the thinking of the assistant message that follows
    it. Anything else is a 400 naming its type."""
    if items is None:
        return ()
    if isinstance(items, str):
        return (Message(role="user", content=items),)
    out: list[Message] = []
    names = {c.id: c.name for m in earlier for c in m.tool_calls if c.id}
    thinking = ""  # reasoning waiting for the assistant message it belongs to
    for i, raw in enumerate(items):
        path = f"input[{i}]"
        kind = raw.get("type")
        if kind is None and "role" in raw:
            kind = "message"  # the short form: {"role": ..., "content": ...}
        if kind == "message":
            item = wire.decode(wire.MessageItem, raw, path)
            role = _ROLES.get(item.role)
            if role is None:
                raise InvalidParam(f"Invalid value for '{path}.role': '{item.role}' (must be 'user', 'assistant', "
                                   "'system' or 'developer').", f"{path}.role")
            text, images = _parts(item.content, f"{path}.content")
            msg = Message(role=role, content=text, images=images)
            if thinking and role == "assistant":
                msg = replace(msg, thinking=thinking)
            elif thinking:
                out.append(Message(role="assistant", thinking=thinking))  # a turn that only reasoned
            thinking = ""
            out.append(msg)
        elif kind == "function_call":
            call_item = wire.decode(wire.FunctionCallItem, raw, path)
            args = _arguments(call_item.arguments, path)
            last = out[-1] if out else None
            if last is not None and last.role == "assistant" and not thinking:
                call = ToolCallIn(call_item.name, args, len(last.tool_calls), call_item.call_id)
                out[-1] = replace(last, tool_calls=last.tool_calls + (call,))
            else:
                call = ToolCallIn(call_item.name, args, 0, call_item.call_id)
                out.append(Message(role="assistant", thinking=thinking, tool_calls=(call,)))
                thinking = ""
            names[call_item.call_id] = call_item.name
        elif kind == "function_call_output":
            result = wire.decode(wire.FunctionCallOutputItem, raw, path)
            text, images = _parts(result.output, f"{path}.output")
            if thinking:
                out.append(Message(role="assistant", thinking=thinking))
                thinking = ""
            out.append(Message(role="tool", content=text, images=images, tool_name=names.get(result.call_id, ""),
                               tool_call_id=result.call_id))
        elif kind == "reasoning":
            reasoning = wire.decode(wire.ReasoningItem, raw, path)
            # herd sends its reasoning as content; a summary (another server's) is the next best thing.
            parts = reasoning.content if reasoning.content else reasoning.summary
            thinking += "".join(p.text for p in parts)
        elif kind is None:
            raise InvalidParam(f"Missing required parameter: '{path}.type'.", f"{path}.type")
        else:
            raise InvalidParam(f"Input items of type '{kind}' are not supported by herd ('{path}').",
                               f"{path}.type")
    # Reasoning left at the very end is dropped: an assistant message there would be continued, not answered.
    return tuple(out)


def _flat_tools(tools: list[dict[str, Any]] | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, namespace, function tool) for every function tool, those grouped in a `namespace` tool (as Codex
    sends its sub-agent tools) included: the model sees them as plain functions, and a call of one is answered
    with its namespace."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for i, tool in enumerate(tools or ()):
        where = f"tools[{i}]"
        kind = tool.get("type")
        if kind == "namespace" and isinstance(tool.get("name"), str) and isinstance(tool.get("tools"), list):
            for j, inner in enumerate(tool["tools"]):
                inner_where = f"{where}.tools[{j}]"
                if not isinstance(inner, dict) or inner.get("type") != "function":
                    kind = inner.get("type") if isinstance(inner, dict) else None
                    raise InvalidParam(f"Tools of type '{kind}' are not supported by herd: only 'function' tools "
                                       f"are ('{inner_where}.type').", f"{inner_where}.type")
                out.append((inner_where, tool["name"], inner))
        elif kind != "function":
            raise InvalidParam(f"Tools of type '{kind}' are not supported by herd: only 'function' tools (alone or "
                               f"in a 'namespace') are ('{where}.type').", f"{where}.type")
        else:
            out.append((where, "", tool))
    return out


def _tools(tools: list[dict[str, Any]] | None
           ) -> tuple[tuple[ToolDef, ...], tuple[dict[str, object], ...], dict[str, str]]:
    """Function tools -> ToolDefs (through the chat completions shape the templates see), their echo, and the
    namespace of each namespaced function."""
    raw: list[dict[str, Any]] = []
    echo: list[dict[str, object]] = []
    namespaces: dict[str, str] = {}
    seen: set[str] = set()
    for where, namespace, tool in _flat_tools(tools):
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidParam(f"Missing required parameter: '{where}.name'.", f"{where}.name")
        desc, params, strict = tool.get("description"), tool.get("parameters"), tool.get("strict")
        if desc is not None and not isinstance(desc, str):
            raise InvalidParam(f"Invalid type for '{where}.description': expected a string.", f"{where}.description")
        if params is not None and not isinstance(params, dict):
            raise InvalidParam(f"Invalid type for '{where}.parameters': expected an object.", f"{where}.parameters")
        if strict is not None and not isinstance(strict, bool):
            raise InvalidParam(f"Invalid type for '{where}.strict': expected a boolean.", f"{where}.strict")
        function: dict[str, object] = {"name": name}
        if desc:
            function["description"] = desc
        function["parameters"] = params if params is not None else {"type": "object", "properties": {}}
        if strict is not None:
            function["strict"] = strict
        if name in seen:
            raise InvalidParam(f"Invalid value for '{where}.name': a tool named '{name}' is already defined.",
                               f"{where}.name")
        seen.add(name)
        if namespace:
            namespaces[name] = namespace
        raw.append({"type": "function", "function": function})
        echo.append({"type": "function", "description": desc, "name": name, "parameters": params,
                     "strict": True if strict is None else strict})  # strict is the Responses default
    return native.tool_defs(raw), tuple(echo), namespaces


def _choice(choice: str | dict[str, Any] | None, tools: tuple[ToolDef, ...]
            ) -> tuple[tuple[ToolDef, ...], str | None]:
    """tool_choice -> (the tools the model sees, force_tool), with chat completions' rules (translate.py): "none"
    hides the tools, "required" forces some call, a named function that one, by grammar from the first token.
    `allowed_tools` narrows the list the model sees, then applies its mode."""
    names = [t.name for t in tools]
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function":
            name = choice.get("name")
            if not isinstance(name, str):
                raise InvalidParam("Missing required parameter: 'tool_choice.name'.", "tool_choice.name")
            keep, forced = tool_choice({"type": "function", "function": {"name": name}}, names)
            return (tools if keep else ()), forced
        if kind == "allowed_tools":
            mode, allowed = choice.get("mode"), choice.get("tools")
            if mode not in ("auto", "required") or not isinstance(allowed, list):
                raise InvalidParam("Invalid value for 'tool_choice': 'allowed_tools' needs 'mode' ('auto' or "
                                   "'required') and a list of 'tools'.", "tool_choice")
            wanted = {t.get("name") for t in allowed if isinstance(t, dict) and t.get("type") == "function"}
            tools = tuple(t for t in tools if t.name in wanted)
            keep, forced = tool_choice(mode, [t.name for t in tools])
            return (tools if keep else ()), forced
        raise InvalidParam(f"tool_choice of type '{kind}' is not supported by herd: use 'auto', 'none', "
                           "'required' or a function.", "tool_choice")
    keep, forced = tool_choice(choice, names)
    return (tools if keep else ()), forced


def _text_format(text: wire.TextConfig | None) -> tuple[object, dict[str, object] | None]:
    """text.format -> (the turn's format, its echo). The schema is always enforced, strict or not."""
    fmt = text.format if text is not None else None
    if text is not None and text.verbosity not in _VERBOSITY:
        raise InvalidParam(f"Invalid value for 'text.verbosity': '{text.verbosity}' (must be 'low', 'medium' or "
                           "'high').", "text.verbosity")
    if fmt is None or fmt.type == "text":
        return None, None
    if fmt.type == "json_object":
        return "json", {"type": "json_object"}
    if fmt.type == "json_schema":
        if fmt.schema_ is None:
            raise InvalidParam("Missing required parameter: 'text.format.schema'.", "text.format.schema")
        echo: dict[str, object] = {"type": "json_schema", "description": fmt.description, "name": fmt.name,
                                   "schema": fmt.schema_, "strict": fmt.strict}
        return fmt.schema_, echo
    raise InvalidParam(f"Invalid value for 'text.format.type': '{fmt.type}' (must be 'text', 'json_object' or "
                       "'json_schema').", "text.format.type")


def _reasoning(req: wire.ResponsesRequest) -> tuple[Any, tuple[str | None, str | None]]:
    r = req.reasoning
    if r is None:
        return None, (None, None)
    summary = r.summary if r.summary is not None else r.generate_summary
    if summary not in _SUMMARY:
        raise InvalidParam(f"Invalid value for 'reasoning.summary': '{summary}' (must be 'auto', 'concise' or "
                           "'detailed').", "reasoning.summary")
    if not r.effort:
        return None, (None, summary)  # the model's default
    think = EFFORT.get(r.effort)
    if think is None:
        raise InvalidParam(EFFORT_ERROR.format(r.effort), "reasoning.effort")
    return think, (r.effort, summary)


def plan(req: wire.ResponsesRequest, earlier: tuple[Message, ...] = ()) -> ResponsePlan:
    """A request (and the stored conversation `previous_response_id` named) -> the turn to run."""
    _unsupported(req)
    model = model_name(req.model)
    history = earlier + input_messages(req.input, earlier)
    if not history:
        raise InvalidParam("Missing required parameter: 'input'.", "input")
    messages = history
    if req.instructions:
        messages = (Message(role="system", content=req.instructions), *history)
    all_tools, tools_echo, namespaces = _tools(req.tools)
    tools, force_tool = _choice(req.tool_choice, all_tools)
    fmt, format_echo = _text_format(req.text)
    think, reasoning_echo = _reasoning(req)
    temperature = req.temperature if req.temperature is not None else 1.0  # OpenAI's defaults
    top_p = req.top_p if req.top_p is not None else 1.0
    options: dict[str, object] = {"temperature": temperature, "top_p": top_p}
    if req.max_output_tokens is not None:
        options["num_predict"] = req.max_output_tokens
    logprobs = INCLUDE_LOGPROBS in (req.include or ())
    parallel = req.parallel_tool_calls is not False
    turn = ChatTurn(
        model=model,
        messages=messages,
        tools=tools,
        format=fmt,
        options=options,
        think=think,
        logprobs=logprobs,
        top_logprobs=(req.top_logprobs or 0) if logprobs else 0,
        # "disabled" is OpenAI's 400 for a prompt past the context; unset, herd cuts it as Ollama does.
        truncate=req.truncation != "disabled",
        force_tool=force_tool,
        parallel_tool_calls=parallel,
    )
    store = req.store is not False
    echo = wire.Echo(
        model=model,
        instructions=req.instructions,
        max_output_tokens=req.max_output_tokens,
        parallel_tool_calls=parallel,
        previous_response_id=req.previous_response_id,
        prompt_cache_key=req.prompt_cache_key,
        reasoning=reasoning_echo,
        safety_identifier=req.safety_identifier,
        service_tier=req.service_tier or "default",
        store=store,
        temperature=temperature,
        text_format=format_echo,
        verbosity=(req.text.verbosity if req.text is not None else None) or "medium",
        tool_choice=req.tool_choice if req.tool_choice is not None else "auto",
        tools=tools_echo,
        top_logprobs=req.top_logprobs or 0,
        top_p=top_p,
        truncation=req.truncation or "auto",
        user=req.user,
        metadata=req.metadata,
    )
    return ResponsePlan(turn, history, echo, store, logprobs, namespaces)


