"""The Anthropic translation without a server: request -> ChatTurn for every block type, field and refusal, the
stop_reason mapping, the non-streamed message, and the SSE encoder's events (checked against the official SDK's
own accumulator) for what the default model cannot produce (thinking, tool calls)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from herd.api.anthropic import translate, wire
from herd.api.errors import anthropic_error, anthropic_error_body
from herd.errors import InvalidRequest, LimitExceeded, ModelNotFound, ServerBusy
from herd.parsing.base import ToolCall
from herd.services.chat import ChatChunk, Metrics
from herd.types import ChatTurn, Message, Think, ToolCallIn

PNG = b"\x89PNG\r\n\x1a\n"
PNG64 = base64.b64encode(PNG).decode()
TOOL = {"name": "weather", "description": "Weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
USE = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}
HI = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> dict[str, Any]:
    fields.setdefault("model", "m")
    fields.setdefault("max_tokens", 16)
    fields.setdefault("messages", HI)
    return fields


def turn(fetched: dict[str, bytes] | None = None, **fields: Any) -> ChatTurn:
    return translate.chat_turn(wire.decode(wire.MessagesRequest, body(**fields)), fetched)


def refused(**fields: Any) -> str:
    """The 400's message for a body that must be refused."""
    with pytest.raises(InvalidRequest) as exc:
        turn(**fields)
    return exc.value.message


# ---- request fields ------------------------------------------------------------------------------------------


def test_options_and_defaults() -> None:
    t = turn()
    assert t.model == "m" and t.messages == (Message(role="user", content="hi"),)
    assert t.options == {"num_predict": 16, "temperature": 1.0}  # Anthropic's default temperature
    assert t.think is None and t.tools == () and t.force_tool is None and t.parallel_tool_calls
    assert t.format is None
    t = turn(temperature=0, top_p=0.5, top_k=7, stop_sequences=["END", "\n\n"])
    assert t.options == {"num_predict": 16, "temperature": 0, "top_p": 0.5, "top_k": 7, "stop": ["END", "\n\n"]}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
        ({"max_tokens": "8"}, "max_tokens: Input should be a valid integer"),
        ({"model": None}, "model: Field required"),
        ({"model": " "}, "model: a model name is required"),
        ({"messages": []}, "messages: at least one message is required"),
        ({"messages": "hi"}, "messages: Input should be a valid list"),
        ({"messages": [{"role": "tool", "content": "x"}]},
         "messages.0.role: Input should be 'user', 'assistant' or 'system'"),
        ({"messages": [{"role": "user"}]}, "messages.0.content: Field required"),
        ({"messages": [{"role": "user", "content": 5}]},
         "messages.0.content: Input should be a valid string or a list of content blocks"),
        ({"stream": "yes"}, "stream: Input should be a valid boolean"),
        ({"temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
        ({"top_p": -1}, "top_p: Input should be greater than or equal to 0"),
        ({"top_k": 1.5}, "top_k: Input should be a valid integer"),
        ({"stop_sequences": [""]}, "stop_sequences.0: a stop sequence must not be empty"),
        ({"stop_sequences": "END"}, "stop_sequences: Input should be a valid list"),
        ({"frequency_penalty": 1}, "frequency_penalty: Extra inputs are not permitted"),
        ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]},
         "mcp_servers: MCP connectors are not supported by herd"),
    ],
)
def test_request_errors_name_the_field(fields: dict[str, Any], message: str) -> None:
    data = body(**fields)
    for key in [k for k, v in fields.items() if v is None]:
        del data[key]
    with pytest.raises(InvalidRequest) as exc:
        translate.chat_turn(wire.decode(wire.MessagesRequest, data))
    assert exc.value.message == message


def test_body_that_is_not_an_object() -> None:
    with pytest.raises(InvalidRequest, match="body: Input should be a valid dictionary"):
        wire.decode(wire.MessagesRequest, [1])


def test_harmless_fields_are_accepted() -> None:
    t = turn(metadata={"user_id": "u"}, service_tier="auto", container="c1", inference_geo="us", mcp_servers=[],
             speed="fast", cache_control={"type": "ephemeral"}, diagnostics={"previous_message_id": "msg_1"})
    assert t.messages == (Message(role="user", content="hi"),)


def test_count_tokens_needs_no_max_tokens() -> None:
    req = wire.decode(wire.CountTokensRequest, {"model": "m", "messages": HI})
    t = translate.chat_turn(req)
    assert t.options == {} and t.messages == (Message(role="user", content="hi"),)


# ---- system and messages -------------------------------------------------------------------------------------


def test_system_string_and_blocks() -> None:
    assert turn(system="be brief").messages[0] == Message(role="system", content="be brief")
    blocks = [{"type": "text", "text": "one", "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": "two", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    assert turn(system=blocks).messages[0] == Message(role="system", content="one\n\ntwo")
    assert turn(system="").messages == (Message(role="user", content="hi"),)  # nothing to say: no message
    assert "system.0: system content block type 'image' is not supported" in refused(
        system=[{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG64}}])
    assert refused(system=[{"type": "text", "text": "x", "cache_control": {"type": "forever"}}]) == \
        "system.0.cache_control.type: Input should be 'ephemeral'"


def test_system_messages_in_the_conversation() -> None:
    t = turn(system="first", messages=[*HI, {"role": "system", "content": [{"type": "text", "text": "now be brief"}]},
                                       {"role": "user", "content": "go"}])
    assert [(m.role, m.content) for m in t.messages] == [("system", "first"), ("user", "hi"),
                                                        ("system", "now be brief"), ("user", "go")]
    assert refused(messages=[{"role": "system", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG64}}]}]) == \
        "messages.0.content.0: system content block type 'image' is not supported by herd"


def test_text_and_image_blocks_make_one_user_message() -> None:
    t = turn(messages=[{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG64},
         "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "what is it?"},
    ]}])
    assert t.messages == (Message(role="user", content="look\n\nwhat is it?", images=(PNG,)),)


def test_image_errors() -> None:
    def image(source: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "image", "source": source}]}]

    assert refused(messages=image({"type": "base64", "media_type": "image/png", "data": "not base64!"})) == \
        "messages.0.content.0.source.data: invalid base64 image data"
    assert refused(messages=image({"type": "base64", "media_type": "image/tiff", "data": PNG64})) == \
        "messages.0.content.0.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' " \
        "or 'image/webp'"
    assert refused(messages=image({"type": "file", "file_id": "f"})) == \
        "messages.0.content.0.source: image source type 'file' is not supported by herd"
    url = image({"type": "url", "url": "https://example.com/a.png"})
    assert "HERD_ALLOW_IMAGE_URLS" in refused(messages=url)
    # With the server's permission the route fetches it first; the translation reads the fetched bytes.
    assert turn({"https://example.com/a.png": PNG}, messages=url).messages[0].images == (PNG,)
    req = wire.decode(wire.MessagesRequest, body(messages=url))
    assert translate.image_urls(translate.decoded_messages(req)) == ["https://example.com/a.png"]


def test_url_fetch_is_bounded_before_fetching() -> None:
    source = {"type": "url", "url": "http://127.0.0.1:9/never"}
    req = wire.decode(wire.MessagesRequest, body(messages=[{"role": "user", "content": [
        {"type": "image", "source": source}, {"type": "image", "source": source}]}]))
    with pytest.raises(LimitExceeded):
        asyncio.run(translate.fetch_remote_images(req, 1000, max_images=1))


def test_tool_round_trip_messages() -> None:
    t = turn(tools=[TOOL], messages=[
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should call it", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            USE,
            {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Bergen"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "no"}, {"type": "text", "text": "station"}]},
            {"type": "text", "text": "and so?"}]},
    ])
    user, assistant, first, second, follow_up = t.messages
    assert user == Message(role="user", content="weather in Oslo?")
    assert assistant == Message(role="assistant", content="Checking.", thinking="I should call it", tool_calls=(
        ToolCallIn("weather", {"city": "Oslo"}, 0, "toolu_1"), ToolCallIn("weather", {"city": "Bergen"}, 1, "toolu_2")))
    assert first == Message(role="tool", content="cold", tool_name="weather", tool_call_id="toolu_1")
    # is_error has no field in herd's messages: the model reads it in the text.
    assert second == Message(role="tool", content="Error: no\n\nstation", tool_name="weather", tool_call_id="toolu_2")
    assert follow_up == Message(role="user", content="and so?")


def test_tool_result_with_image_and_only_results() -> None:
    t = turn(messages=[
        {"role": "assistant", "content": [USE]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
            {"type": "text", "text": "map:"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG64}}]}]},
    ])
    assert t.messages[1] == Message(role="tool", content="map:", images=(PNG,), tool_name="weather",
                                    tool_call_id="toolu_1")
    assert len(t.messages) == 2  # a user turn of results only adds no empty user message


def test_tool_result_errors() -> None:
    assert refused(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}]) == \
        "messages.0.content.0.tool_use_id: no earlier tool_use block has the id 'toolu_9'"
    assert refused(messages=[{"role": "assistant", "content": [USE]}, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "document", "source": {}}]}]}]) == \
        "messages.1.content.0.content.0: tool_result content block type 'document' is not supported by herd"
    assert refused(messages=[{"role": "assistant", "content": [USE]}, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text"}]}]}]) == \
        "messages.1.content.0.content.0.text: Field required"
    # A response's tool_use block as the SDK dumps it goes back as it is.
    echoed = turn(messages=[{"role": "assistant", "content": [{**USE, "caller": {"type": "direct"}, "toolset_name": None}]}])
    assert echoed.messages[0].tool_calls == (ToolCallIn("weather", {"city": "Oslo"}, 0, "toolu_1"),)
    assert refused(messages=[{"role": "assistant", "content": [{**USE, "caller": {"type": "code_execution_20250825"}}]}]) \
        .startswith("messages.0.content.0.caller.type: Input should be 'direct'")
    assert refused(messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "w",
                                                                 "input": "{}"}]}]) == \
        "messages.0.content.0.input: Input should be a valid dictionary"


def test_thinking_blocks() -> None:
    t = turn(messages=[*HI, {"role": "assistant", "content": [
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "thinking", "thinking": "hmm"},
        {"type": "text", "text": "Hello"}]}, {"role": "user", "content": "again"}])
    assert t.messages[1] == Message(role="assistant", content="Hello", thinking="hmm")  # redacted: dropped


@pytest.mark.parametrize("kind", ["document", "search_result", "server_tool_use", "web_search_tool_result",
                                  "mcp_tool_use", "container_upload", "made_up"])
def test_unsupported_block_types_are_refused_by_name(kind: str) -> None:
    message = refused(messages=[{"role": "user", "content": [{"type": kind}]}])
    assert message == f"messages.0.content.0: content block type '{kind}' is not supported by herd"


@pytest.mark.parametrize(
    ("role", "block", "kind"),
    [("user", USE, "tool_use"), ("user", {"type": "thinking", "thinking": "x"}, "thinking"),
     ("assistant", {"type": "tool_result", "tool_use_id": "toolu_1"}, "tool_result"),
     ("assistant", {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG64}},
      "image")],
)
def test_blocks_in_the_wrong_role(role: str, block: dict[str, Any], kind: str) -> None:
    assert refused(messages=[{"role": role, "content": [block]}]) == \
        f"messages.0.content.0: a {kind} block is not allowed in a {role} message"


def test_block_field_errors() -> None:
    assert refused(messages=[{"role": "user", "content": [{"text": "x"}]}]) == "messages.0.content.0.type: Field required"
    assert refused(messages=[{"role": "user", "content": ["x"]}]) == \
        "messages.0.content.0: Input should be a valid dictionary"
    assert refused(messages=[{"role": "user", "content": [{"type": "text", "text": "x", "extra": 1}]}]) == \
        "messages.0.content.0.extra: Extra inputs are not permitted"


# ---- tools and tool_choice ----------------------------------------------------------------------------------


def test_tools_become_openai_style_definitions() -> None:
    (tool,) = turn(tools=[{**TOOL, "cache_control": {"type": "ephemeral"}, "type": "custom"}]).tools
    assert (tool.name, tool.description, tool.parameters) == ("weather", "Weather in a city", TOOL["input_schema"])
    assert tool.raw == {"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                                         "parameters": TOOL["input_schema"]}}
    (bare,) = turn(tools=[{"name": "now", "input_schema": {"type": "object"}}]).tools
    assert bare.description == "" and bare.raw["function"] == {"name": "now", "description": "",  # type: ignore[index]
                                                               "parameters": {"type": "object"}}


@pytest.mark.parametrize("kind", ["web_search_20250305", "bash_20250124", "text_editor_20250728",
                                  "code_execution_20250825", "computer_20250124"])
def test_server_tools_are_refused_by_type(kind: str) -> None:
    assert refused(tools=[{"type": kind, "name": "x"}]) == f"tools.0: tool type '{kind}' is not supported by herd"


def test_tool_errors() -> None:
    assert refused(tools=[{"name": "x"}]) == "tools.0.input_schema: Field required"
    assert refused(tools=[TOOL, TOOL]) == "tools: tool names must be unique ('weather' appears twice)"
    assert refused(tools=[{**TOOL, "strict": True}]) == "tools.0.strict: Input should be False"
    assert refused(tools=[{**TOOL, "defer_loading": True}]) == "tools.0.defer_loading: Input should be False"
    assert refused(tools=[{**TOOL, "input_examples": [{}]}]) == "tools.0.input_examples: Extra inputs are not permitted"
    assert turn(tools=[{**TOOL, "eager_input_streaming": True, "defer_loading": False}]).tools[0].name == "weather"


def test_tool_choice() -> None:
    assert turn(tools=[TOOL], tool_choice={"type": "auto"}).force_tool is None
    assert turn(tools=[TOOL], tool_choice={"type": "any"}).force_tool == ""
    t = turn(tools=[TOOL], tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True})
    assert t.force_tool == "weather" and not t.parallel_tool_calls and t.tools
    assert not turn(tools=[TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True}).parallel_tool_calls
    t = turn(tools=[TOOL], tool_choice={"type": "none"})
    assert t.tools == () and t.force_tool is None
    assert refused(tools=[TOOL], tool_choice={"type": "tool", "name": "other"}) == \
        "tool_choice.name: no tool named 'other' in 'tools'"
    assert refused(tools=[TOOL], tool_choice={"type": "tool"}) == "tool_choice.name: Field required"
    assert refused(tool_choice={"type": "any"}) == "tool_choice: type 'any' needs at least one tool in 'tools'"
    assert refused(tool_choice={"type": "required"}) == \
        "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"


# ---- thinking, output config, context management -----------------------------------------------------------


@pytest.mark.parametrize(("budget", "level"), [(1024, "low"), (4000, "low"), (4096, "medium"), (10000, "medium"),
                                                (16383, "medium"), (16384, "high"), (31999, "high")])
def test_thinking_budget_maps_onto_a_level(budget: int, level: str) -> None:
    assert turn(max_tokens=32000, thinking={"type": "enabled", "budget_tokens": budget}).think == Think(True, level)


def test_thinking_types_and_errors() -> None:
    assert turn(thinking={"type": "disabled"}).think == Think(False)
    assert turn(thinking={"type": "adaptive"}).think is None  # the model decides
    assert turn(thinking={"type": "adaptive"}, output_config={"effort": "high"}).think == Think(True, "high", optional=True)
    assert turn(output_config={"effort": "low"}).think == Think(True, "low", optional=True)
    assert refused(thinking={"type": "enabled"}) == "thinking.enabled.budget_tokens: Field required"
    assert refused(max_tokens=5000, thinking={"type": "enabled", "budget_tokens": 100}) == \
        "thinking.budget_tokens: Input should be greater than or equal to 1024"
    assert refused(max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 2000}) == \
        "max_tokens: must be greater than thinking.budget_tokens"
    assert refused(max_tokens=5000, thinking={"type": "enabled", "budget_tokens": 2000}, tools=[TOOL],
                   tool_choice={"type": "any"}) == "thinking may not be enabled when tool_choice forces tool use"
    assert refused(thinking={"type": "on"}) == "thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'"
    assert turn(output_config={"effort": "xhigh"}).think == Think(True, "max", optional=True)
    assert refused(output_config={"effort": "extreme"}) == \
        "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
    assert refused(thinking={"type": "between_tools"}) == \
        "thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'"


def test_thinking_display_omitted_sends_blocks_without_text() -> None:
    def req(display: str) -> wire.MessagesRequest:
        return wire.decode(wire.MessagesRequest, body(thinking={"type": "adaptive", "display": display}))

    assert translate.thinking_shown(req("summarized")) and not translate.thinking_shown(req("omitted"))
    last = ChatChunk(content="A", thinking="secret", done=True, done_reason="stop")
    assert translate.message_of("m", last, show_thinking=False)["content"] == [
        {"type": "thinking", "thinking": "", "signature": ""}, {"type": "text", "text": "A"}]
    stream = translate.MessageStream("m", show_thinking=False)
    events = [e for c in (ChatChunk(thinking="secret"), last) for e in stream.events(c)]
    assert "secret" not in json.dumps(events)
    assert [e["type"] for e in events][2:4] == ["content_block_start", "content_block_stop"]


def test_structured_output() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert turn(output_config={"format": {"type": "json_schema", "schema": schema}}).format == schema
    assert turn(output_format={"type": "json_schema", "schema": schema}).format == schema
    assert "not both" in refused(output_format={"type": "json_schema", "schema": schema},
                                 output_config={"format": {"type": "json_schema", "schema": schema}})


def test_context_management_clear_thinking() -> None:
    history = [*HI, {"role": "assistant", "content": [{"type": "thinking", "thinking": "a"},
                                                      {"type": "text", "text": "A"}]},
               {"role": "user", "content": "more"},
               {"role": "assistant", "content": [{"type": "thinking", "thinking": "b"},
                                                 {"type": "text", "text": "B"}]},
               {"role": "user", "content": "again"}]

    def thoughts(keep: object) -> list[str]:
        edit: dict[str, object] = {"type": "clear_thinking_20251015"}
        if keep is not None:
            edit["keep"] = keep
        t = turn(messages=history, context_management={"edits": [edit]})
        return [m.thinking for m in t.messages if m.role == "assistant"]

    assert thoughts("all") == ["a", "b"]
    assert thoughts(None) == ["", "b"]  # Anthropic's default: the last thinking turn is kept
    assert thoughts({"type": "thinking_turns", "value": 2}) == ["a", "b"]
    assert [m.thinking for m in turn(messages=history).messages if m.role == "assistant"] == ["a", "b"]
    assert refused(context_management={"edits": [{"type": "clear_tool_uses_20250919"}]}) == \
        "context_management.edits.0: context edit type 'clear_tool_uses_20250919' is not supported by herd"


# ---- responses ----------------------------------------------------------------------------------------------


METRICS = Metrics(prompt_eval_count=7, eval_count=3)
CALL = ToolCall("weather", {"city": "Oslo", "days": 2}, 0, "call_abc12345")


@pytest.mark.parametrize(
    ("chunk", "tools", "expected"),
    [
        (ChatChunk(done=True, done_reason="stop"), False, ("end_turn", None)),
        (ChatChunk(done=True, done_reason="length"), False, ("max_tokens", None)),
        (ChatChunk(done=True, done_reason="stop", stop_sequence="END"), False, ("stop_sequence", "END")),
        (ChatChunk(done=True, done_reason="stop"), True, ("tool_use", None)),
        (ChatChunk(done=True, done_reason="length"), True, ("tool_use", None)),
    ],
)
def test_stop_reason(chunk: ChatChunk, tools: bool, expected: tuple[str, str | None]) -> None:
    assert translate.stop_reason(chunk, tools) == expected


def test_message_blocks_in_order() -> None:
    last = ChatChunk(content="Let me check.", thinking="hmm", tool_calls=(CALL,), done=True, done_reason="stop",
                     metrics=METRICS)
    doc = translate.message_of("m", last)
    assert list(doc) == ["id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"]
    assert str(doc["id"]).startswith("msg_") and len(str(doc["id"])) == 28
    content: list[dict[str, Any]] = doc["content"]  # type: ignore[assignment]
    thinking, text, use = content
    assert thinking == {"type": "thinking", "thinking": "hmm", "signature": ""}
    assert text == {"type": "text", "text": "Let me check."}
    assert use["type"] == "tool_use" and use["id"].startswith("toolu_") and use["name"] == "weather"
    assert use["input"] == {"city": "Oslo", "days": 2}
    assert (doc["stop_reason"], doc["stop_sequence"]) == ("tool_use", None)
    assert doc["usage"] == {"input_tokens": 7, "output_tokens": 3}


def test_message_text_block_only_when_needed() -> None:
    only_call = translate.message_of("m", ChatChunk(tool_calls=(CALL,), done=True, done_reason="stop"))
    assert [b["type"] for b in only_call["content"]] == ["tool_use"]  # type: ignore[attr-defined]
    empty = translate.message_of("m", ChatChunk(done=True, done_reason="length"))
    assert empty["content"] == [{"type": "text", "text": ""}] and empty["stop_reason"] == "max_tokens"


async def _chunks(*chunks: ChatChunk) -> AsyncIterator[ChatChunk]:
    for chunk in chunks:
        yield chunk


def test_non_streamed_drains_the_stream() -> None:
    doc = asyncio.run(translate.message("m", _chunks(
        ChatChunk(content="Hel"), ChatChunk(content="lo"),
        ChatChunk(done=True, done_reason="stop", stop_sequence="!", metrics=METRICS))))
    assert doc["content"] == [{"type": "text", "text": "Hello"}]
    assert (doc["stop_reason"], doc["stop_sequence"]) == ("stop_sequence", "!")


STREAM = (ChatChunk(thinking="Let me "), ChatChunk(thinking="see"), ChatChunk(content="Calling"),
          ChatChunk(content=" now", tool_calls=(CALL,)),
          ChatChunk(done=True, done_reason="stop", metrics=METRICS))


def _events(*chunks: ChatChunk) -> list[dict[str, Any]]:
    stream = translate.MessageStream("m")
    return [e for c in chunks for e in stream.events(c)]


def test_stream_events_thinking_then_text_then_tool_use() -> None:
    events = _events(*STREAM)
    assert [(e["type"], e.get("index"), e.get("delta", {}).get("type") if e["type"] != "message_delta" else None)
            for e in events] == [
        ("message_start", None, None), ("ping", None, None),
        ("content_block_start", 0, None), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"), ("content_block_stop", 0, None),
        ("content_block_start", 1, None), ("content_block_delta", 1, "text_delta"),
        ("content_block_delta", 1, "text_delta"), ("content_block_stop", 1, None),
        ("content_block_start", 2, None), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("message_delta", None, None), ("message_stop", None, None)]
    start = events[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"] == {"input_tokens": 0,
                                                                                          "output_tokens": 0}
    assert events[2]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert events[6]["content_block"] == {"type": "text", "text": ""}
    use = events[10]["content_block"]
    assert use["type"] == "tool_use" and use["input"] == {} and use["name"] == "weather"
    assert json.loads(events[11]["delta"]["partial_json"]) == {"city": "Oslo", "days": 2}
    assert events[13]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[13]["usage"] == {"input_tokens": 7, "output_tokens": 3}


def test_stream_back_to_thinking_opens_a_new_block() -> None:
    types = [(e["type"], e.get("index")) for e in _events(
        ChatChunk(content="a"), ChatChunk(thinking="b"), ChatChunk(done=True, done_reason="stop"))]
    assert types[2:8] == [("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
                          ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1)]


def test_empty_stream_has_one_empty_text_block() -> None:
    events = _events(ChatChunk(), ChatChunk(done=True, done_reason="length", metrics=METRICS))
    assert [e["type"] for e in events] == ["message_start", "ping", "content_block_start", "content_block_stop",
                                           "message_delta", "message_stop"]
    assert events[2]["content_block"] == {"type": "text", "text": ""}
    assert events[4]["delta"]["stop_reason"] == "max_tokens"


def test_stream_accumulates_in_the_sdk_to_the_non_streamed_message() -> None:
    """The official SDK's own accumulator reads the events into the same message as the non-streamed answer."""
    from anthropic.lib.streaming._messages import accumulate_event

    stream = translate.MessageStream("m")
    snapshot = None
    for chunk in STREAM:
        for event in stream.events(chunk):
            snapshot = accumulate_event(event=event, current_snapshot=snapshot,  # type: ignore[arg-type]
                                        json_bufs={})
    assert snapshot is not None
    final = snapshot.to_dict()
    whole = translate.message_of("m", ChatChunk(content="Calling now", thinking="Let me see", tool_calls=(CALL,),
                                                done=True, done_reason="stop", metrics=METRICS))
    for doc in (final, whole):
        for block in doc["content"]:  # type: ignore[attr-defined]
            block.pop("id", None)  # tool_use ids are fresh per answer
    assert final["content"] == whole["content"]
    assert final["usage"] == whole["usage"] and final["stop_reason"] == "tool_use"


def test_sse_framing_and_error_bodies() -> None:
    text = translate.MessageStream("m").encode(ChatChunk(content="hi"))
    assert text is not None
    frames = text.split("\n\n")
    assert frames[-1] == "" and all(f.startswith("event: ") for f in frames[:-1])
    name, data = frames[0].split("\n")
    assert name == "event: message_start" and json.loads(data[len("data: "):])["type"] == "message_start"
    assert anthropic_error_body(400, "bad") == {"type": "error",
                                                "error": {"type": "invalid_request_error", "message": "bad"}}
    kinds = {s: anthropic_error_body(s, "x")["error"]["type"] for s in (404, 413, 429, 499, 500, 503)}  # type: ignore[index]
    assert kinds == {404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 499: "api_error",
                     500: "api_error", 503: "overloaded_error"}
    resp = anthropic_error(ModelNotFound("model 'x' not found"))
    assert resp.status_code == 404 and json.loads(bytes(resp.body))["error"]["type"] == "not_found_error"
    assert anthropic_error(ServerBusy("server busy")).status_code == 503


def test_error_after_the_stream_began_is_one_error_event() -> None:
    from herd.api.anthropic.routes import _sse_error
    from herd.errors import RunnerFailed

    name, data, rest = _sse_error(RunnerFailed("model runner has unexpectedly stopped")).split("\n", 2)
    assert name == "event: error" and rest == "\n"
    assert json.loads(data[len("data: "):]) == {"type": "error", "error": {
        "type": "api_error", "message": "model runner has unexpectedly stopped"}}
    assert json.loads(_sse_error(ValueError("boom")).split("\n")[1][len("data: "):])["error"] == {
        "type": "api_error", "message": "internal error: boom"}
    assert "overloaded_error" in _sse_error(ServerBusy("server busy"))
