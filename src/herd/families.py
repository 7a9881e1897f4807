"""Model families: the format a model writes its thinking and tool calls in, and how herd reads and constrains it.

Chosen the way Ollama chooses (spec 7.1): the manifest config's `parser` / `renderer` names first (Modelfile
PARSER and RENDERER), then the model's architecture and chat template. The template-detected default
(`<tool_call>` JSON, Llama 3's `<|python_tag|>`, Mistral's `[TOOL_CALLS]`, or Ollama's generic tag) keeps the
parsers of parsing/toolcalls.py; the other families have an incremental parser of their own in parsing/, and a
call grammar in constrain/families.py so that a call, once opened, is valid by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module

from herd.parsing.base import IncrementalParser
from herd.types import ToolDef

ParserFactory = Callable[[Sequence[ToolDef], bool, bool], IncrementalParser]


@dataclass(frozen=True)
class Family:
    name: str
    parser: str = ""  # "module:Class" under herd.parsing; "" = the template-detected parsers (parsing/toolcalls.py)
    thinks: bool = False  # the model writes reasoning in this family's form (capability "thinking")
    tools: bool = True  # the parser reads tool calls (capability "tools")
    renderer: str = ""  # "harmony": herd's own renderer (prompt/harmony.py); "" = the model's template
    can_disable_thinking: bool = True  # think:false reaches the model (else it thinks anyway, and it is hidden)

    def make_parser(self, tools: Sequence[ToolDef], thinking: bool, prefilled: bool) -> IncrementalParser | None:
        if not self.parser:
            return None
        module, cls = self.parser.split(":")
        factory: ParserFactory = getattr(import_module("herd.parsing." + module), cls)
        return factory(tools, thinking, prefilled)


GENERIC = Family("generic")
HARMONY = Family("harmony", "harmony:HarmonyParser", thinks=True, renderer="harmony", can_disable_thinking=False)
QWEN3 = Family("qwen3", thinks=True)  # <think> and <tool_call> JSON: the default parsers with thinking on
QWEN3_CODER = Family("qwen3-coder", "qwen3_coder:Qwen3CoderParser", thinks=False)
QWEN35 = Family("qwen3.5", "qwen3_coder:Qwen3CoderParser", thinks=True)
DEEPSEEK = Family("deepseek3", "deepseek:DeepSeekParser", thinks=True)
GEMMA3 = Family("gemma3", "gemma:Gemma3Parser")
GEMMA4 = Family("gemma4", "gemma:Gemma4Parser", thinks=True)
GLM = Family("glm-4.7", "glm:GlmParser", thinks=True)
GRANITE = Family("granite", "granite:GraniteParser", thinks=True)

# Ollama's names for its built-in renderers and parsers (and herd's own for these families): what a Modelfile's
# PARSER and RENDERER may say. Each is honoured; any other name is refused at create time.
BY_NAME: dict[str, Family] = {
    "harmony": HARMONY,
    "gpt-oss": HARMONY,
    "qwen3": QWEN3,
    "qwen3-thinking": QWEN3,
    "qwen3-instruct": Family("qwen3-instruct"),
    "qwen3-coder": QWEN3_CODER,
    "qwen3.5": QWEN35,
    "qwen3-vl-thinking": QWEN3,
    "qwen3-vl-instruct": Family("qwen3-vl-instruct"),
    "deepseek3": DEEPSEEK,
    "deepseek3.1": DEEPSEEK,
    "deepseek-r1": DEEPSEEK,
    "gemma3": GEMMA3,
    "gemma4": GEMMA4,
    "glm-4.5": GLM,
    "glm-4.6": GLM,
    "glm-4.7": GLM,
    "granite": GRANITE,
    "hermes": GENERIC,
    "llama3": GENERIC,
    "mistral": GENERIC,
    "ministral": GENERIC,
}


def family_named(name: str) -> Family | None:
    return BY_NAME.get(name.strip().lower())


def detect_family(parser: str, renderer: str, architecture: str, template: str) -> Family:
    """The family of a model: its config's parser (or renderer) name, else its architecture and template."""
    for name in (parser, renderer):
        if name:
            family = family_named(name)
            if family is not None:
                return family
    arch = architecture.lower()
    if arch.startswith("gpt-oss") or arch == "gptoss" or "<|channel|>" in template:
        return HARMONY
    if "<function=" in template and "<parameter=" in template:
        return QWEN35 if "<think>" in template else QWEN3_CODER
    if "<arg_key>" in template:
        return GLM
    if "tool▁call" in template or "<｜Assistant｜>" in template or arch.startswith("deepseek"):
        return DEEPSEEK
    if "<|tool_call>" in template or arch.startswith("gemma4"):
        return GEMMA4
    if arch.startswith("gemma3") or arch == "gemma":
        return GEMMA3
    if "<|tool_call|>" in template or arch.startswith("granite"):
        return GRANITE
    if arch.startswith("qwen3") and "<think>" in template:
        return QWEN3
    return GENERIC
