"""Offline models for the agent frameworks' tests: each follows its framework's own model
interface and plays one fixed script, so a run needs no LLM and no network.

The script is a refund agent's: read the order (``get_order``), refund its amount
(``issue_refund``), then answer ``approve``. Each model keeps what every tool returned to it
(``returns``, by tool name) so the test can check what the framework handed the model; a
tool error the framework turns into a message for the model fails the script at once, with
that message (a model would "self-correct", hiding the gateway's answer).

Every turn reports the same usage, as a provider would: :data:`TURN_INPUT_TOKENS` and
:data:`TURN_OUTPUT_TOKENS` (and, where the framework carries a cost, pydantic-ai,
:data:`TURN_COST_USD`), so a test knows the usage of a run of :data:`TURNS` turns exactly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from typing import Any, cast

from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import ModelResponse as AgentsResponse
from agents.items import TResponseInputItem, TResponseStreamEvent
from agents.model_settings import ModelSettings
from agents.models.interface import Model, ModelTracing
from agents.tool import Tool
from agents.usage import Usage
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)
from openai.types.responses.response_prompt_param import ResponsePromptParam
from pydantic import ConfigDict
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

__all__ = [
    "DECISION",
    "TURNS",
    "TURN_COST_USD",
    "TURN_INPUT_TOKENS",
    "TURN_OUTPUT_TOKENS",
    "RefundScript",
    "ScriptedAgentsModel",
    "ScriptedChatModel",
    "scripted_function_model",
]

DECISION = "approve"
TURN_INPUT_TOKENS = 120
TURN_OUTPUT_TOKENS = 15
TURN_COST_USD = Decimal("0.0004")
TURNS = 3  # read the order, refund it, answer


class RefundScript:
    """The script's next step, from what the tools returned so far. ``on_write`` runs when
    the script asks for the write (a test can arm something there)."""

    def __init__(self, order_id: str, on_write: Callable[[], None] | None = None) -> None:
        self.order_id = order_id
        self.on_write = on_write
        self.returns: dict[str, Any] = {}
        self.offered: list[list[str]] = []  # the tool names offered to the model, per turn

    def next_call(self) -> tuple[str, dict[str, Any]] | None:
        """``(tool, arguments)`` to call next, or ``None`` when it is time to answer."""
        if "get_order" not in self.returns:
            return "get_order", {"order_id": self.order_id}
        if "issue_refund" not in self.returns:
            if self.on_write is not None:
                self.on_write()
            order = self.returns["get_order"]
            return "issue_refund", {"order_id": self.order_id, "amount": order["amount"]}
        return None


def _structured(content: Any) -> Any:
    """A tool's return as the model saw it: JSON text is parsed, anything else kept."""
    if isinstance(content, str):
        try:
            return json.loads(content)
        except ValueError:
            return content
    return content


# -- pydantic-ai ------------------------------------------------------------------------------


def scripted_function_model(script: RefundScript) -> FunctionModel:
    """pydantic-ai's ``FunctionModel`` playing ``script``. With a structured output type,
    the answer is its output tool's call with ``{"action": DECISION}``."""

    def turn(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        script.offered.append(sorted(t.name for t in info.function_tools))
        for message in messages:
            if not isinstance(message, ModelRequest):
                continue
            for part in message.parts:
                if isinstance(part, RetryPromptPart):
                    raise AssertionError(f"a tool call failed: {part.model_response()}")
                if isinstance(part, ToolReturnPart):
                    script.returns[part.tool_name] = _structured(part.content)
        step = script.next_call()
        usage = RequestUsage(
            input_tokens=TURN_INPUT_TOKENS, output_tokens=TURN_OUTPUT_TOKENS, cost=TURN_COST_USD
        )
        if step is None and info.output_tools:
            answer = ToolCallPart(info.output_tools[0].name, {"action": DECISION})
            return ModelResponse(parts=[answer], usage=usage)
        if step is None:
            return ModelResponse(parts=[TextPart(DECISION)], usage=usage)
        return ModelResponse(parts=[ToolCallPart(step[0], step[1])], usage=usage)

    return FunctionModel(turn, model_name="refund-script")


# -- OpenAI Agents SDK ------------------------------------------------------------------------


class ScriptedAgentsModel(Model):
    """The OpenAI Agents SDK's ``Model`` interface playing ``script``: tool calls as
    Responses-API ``function_call`` items, the answer as an assistant message."""

    def __init__(self, script: RefundScript) -> None:
        self.script = script
        self._serial = 0

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> AgentsResponse:
        self.script.offered.append(sorted(t.name for t in tools))
        names: dict[str, str] = {}
        for raw in input if isinstance(input, list) else []:
            item = cast(dict[str, Any], raw)
            if item.get("type") == "function_call":
                names[str(item["call_id"])] = str(item["name"])
            elif item.get("type") == "function_call_output":
                name = names[str(item["call_id"])]
                self.script.returns[name] = _structured(item["output"])
        step = self.script.next_call()
        self._serial += 1
        if step is None:
            text = ResponseOutputText(type="output_text", text=DECISION, annotations=[])
            message = ResponseOutputMessage(
                id=f"msg-{self._serial}",
                type="message",
                role="assistant",
                status="completed",
                content=[text],
            )
            return AgentsResponse(output=[message], usage=_agents_usage(), response_id=None)
        call = ResponseFunctionToolCall(
            type="function_call",
            id=f"fc-{self._serial}",
            call_id=f"call-{self._serial}",
            name=step[0],
            arguments=json.dumps(step[1]),
            status="completed",
        )
        return AgentsResponse(output=[call], usage=_agents_usage(), response_id=None)

    def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("the tests run the agent without streaming")


def _agents_usage() -> Usage:
    return Usage(
        requests=1,
        input_tokens=TURN_INPUT_TOKENS,
        output_tokens=TURN_OUTPUT_TOKENS,
        total_tokens=TURN_INPUT_TOKENS + TURN_OUTPUT_TOKENS,
    )


# -- LangChain --------------------------------------------------------------------------------


class ScriptedChatModel(BaseChatModel):
    """A LangChain chat model playing ``script``: tool calls as ``AIMessage.tool_calls``
    (``bind_tools`` records the tools offered and returns the model itself), the answer as
    the message's text; each message carries ``usage_metadata``. A ``ToolMessage`` with
    ``status="error"`` fails the script."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    script: RefundScript
    serial: int = 0

    @property
    def _llm_type(self) -> str:
        return "refund-script"

    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: str | None = None, **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        self.script.offered.append(sorted(getattr(t, "name", "") for t in tools))
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._turn(messages)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._turn(messages)

    def _turn(self, messages: list[BaseMessage]) -> ChatResult:
        names: dict[str, str] = {}
        for message in messages:
            if isinstance(message, AIMessage):
                names.update({str(c["id"]): c["name"] for c in message.tool_calls})
            elif isinstance(message, ToolMessage):
                if message.status == "error":
                    raise AssertionError(f"a tool call failed: {message.content}")
                name = names[message.tool_call_id]
                self.script.returns[name] = _structured(message.content)
        step = self.script.next_call()
        self.serial += 1
        usage = UsageMetadata(
            input_tokens=TURN_INPUT_TOKENS,
            output_tokens=TURN_OUTPUT_TOKENS,
            total_tokens=TURN_INPUT_TOKENS + TURN_OUTPUT_TOKENS,
        )
        if step is None:
            answer = AIMessage(content=DECISION, usage_metadata=usage)
        else:
            call = {"name": step[0], "args": step[1], "id": f"call-{self.serial}"}
            answer = AIMessage(content="", tool_calls=[call], usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=answer)])
