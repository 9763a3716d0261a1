// The review page's keys (docs/console.md). The page works without this script: the form is
// plain radio buttons, a select and a submit button.
"use strict";
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) {
    return;
  }
  const target = event.target;
  const tag = target && target.tagName ? target.tagName.toLowerCase() : "";
  const typing = tag === "textarea" || (tag === "input" && target.type !== "radio");
  if (typing) {
    if (event.key === "Escape") {
      target.blur();
    }
    return;
  }
  const form = document.getElementById("verdict-form");
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  const next = document.getElementById("next-case");
  if (key === "n" && next) {
    event.preventDefault();
    window.location.assign(next.href);
    return;
  }
  if (!form) {
    return;
  }
  if (key === "r") {
    event.preventDefault();
    document.getElementById("reason").focus();
    return;
  }
  if (key === "Enter" && tag !== "button" && tag !== "a" && tag !== "summary") {
    event.preventDefault();
    form.requestSubmit();
    return;
  }
  if (tag === "select") {
    return;
  }
  for (const radio of form.querySelectorAll("input[name=verdict]")) {
    if (radio.dataset.key === key || radio.dataset.key2 === key) {
      event.preventDefault();
      radio.checked = true;
      radio.focus();
      return;
    }
  }
});
