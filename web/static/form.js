// The Train form, generated from the server's config schema (GET /api/training/config-schema), so
// fields, defaults, bounds and choices never drift from trainer/config.py. Choice descriptions come
// from the surrogate and cell-type endpoints. Values are sent as typed; the server validates and
// its reasons are shown next to each field.

const GROUPS = [
  ["Data", ["dataset", "mnist_fallback", "encoding"]],
  ["Network", ["network", "cell_type", "surrogate", "hidden", "learn_beta", "learn_threshold"]],
  ["Optimisation", ["epochs", "batch_size", "lr", "timesteps", "seed", "device", "compile"]],
  ["Training recipe", ["optimizer", "weight_decay", "lr_schedule", "warmup_epochs", "grad_clip"]],
];
const LABELS = {
  lr: "Learning rate",
  hidden: "Hidden layer sizes",
  mnist_fallback: "MNIST fallback",
  batch_size: "Batch size",
  cell_type: "Cell type",
};
const DEVICE_SUGGESTIONS = ["auto", "cpu", "cuda", "cuda:0", "cuda:1"];

function labelFor(name) {
  if (LABELS[name]) return LABELS[name];
  const words = name.replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function element(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function boundsText(field) {
  if (field.type === "int_list") {
    return `${field.min_len}–${field.max_len} layers, each ${field.min}–${field.max}; comma-separated`;
  }
  if (field.min !== undefined && field.max !== undefined) return `${field.min} to ${field.max}`;
  return "";
}

export class TrainForm {
  /** @param {HTMLFormElement} form */
  constructor(form, { schema, surrogates, cells }) {
    this.form = form;
    this.fields = schema.fields;
    this.controls = new Map(); // name -> input/select
    this.errors = new Map(); // name -> <p> for the server's reason
    this.notes = new Map(); // name -> <p> for a choice's description
    this.descriptions = {
      surrogate: new Map(surrogates.map((s) => [s.name, s])),
      cell_type: new Map(cells.filter((c) => c.kind === "cell").map((c) => [c.name, c])),
      network: new Map(cells.filter((c) => c.kind === "network").map((c) => [c.name, c])),
    };
    this.generalError = form.querySelector("[data-role=form-error]");
    this.build();
  }

  build() {
    const container = this.form.querySelector("[data-role=fields]");
    const byName = new Map(this.fields.map((f) => [f.name, f]));
    const groups = GROUPS.map(([title, names]) => [title, names.filter((n) => byName.has(n))]);
    // A field the server adds later still gets a control, in an extra group.
    const rest = this.fields.map((f) => f.name).filter((n) => !GROUPS.some(([, names]) => names.includes(n)));
    if (rest.length) groups.push(["More", rest]);
    for (const [title, names] of groups) {
      if (!names.length) continue;
      const fieldset = element("fieldset", {}, [element("legend", { text: title })]);
      for (const name of names) {
        fieldset.append(this.buildField(byName.get(name)));
      }
      container.append(fieldset);
    }
    this.form.addEventListener("change", (event) => {
      const name = event.target && event.target.name;
      if (name) this.clearError(name);
      if (["surrogate", "cell_type", "network"].includes(name)) this.describe(name);
      if (name === "cell_type") this.gateLearnFlags();
    });
    this.form.addEventListener("input", (event) => {
      if (event.target && event.target.name) this.clearError(event.target.name);
    });
    ["surrogate", "cell_type", "network"].forEach((n) => this.describe(n));
    this.gateLearnFlags();
  }

  buildField(field) {
    const id = `field-${field.name}`;
    const hintId = `${id}-hint`;
    const errorId = `${id}-error`;
    const control = this.buildControl(field, id);
    control.setAttribute("aria-describedby", `${hintId} ${errorId}`);
    this.controls.set(field.name, control);

    const hint = element("p", { class: "hint", id: hintId });
    const bounds = boundsText(field);
    hint.textContent = bounds ? `${field.help} (${bounds})` : field.help;
    const note = element("p", { class: "note", id: `${id}-note` });
    this.notes.set(field.name, note);
    const error = element("p", { class: "field-error", id: errorId, role: "alert", dataset: { field: field.name } });
    this.errors.set(field.name, error);

    const label = element("label", { for: id, text: labelFor(field.name) });
    const wrapper = element("div", { class: `field field-${field.type}`, dataset: { field: field.name } });
    if (field.type === "bool") {
      wrapper.append(element("div", { class: "check" }, [control, label]), hint, note, error);
    } else {
      wrapper.append(label, control, hint, note, error);
    }
    return wrapper;
  }

  buildControl(field, id) {
    if (field.choices) {
      const select = element("select", { id, name: field.name });
      for (const choice of field.choices) {
        const info = this.descriptions[field.name] && this.descriptions[field.name].get(choice);
        const unavailable = info && info.available === false;
        const option = element("option", { value: choice, text: unavailable ? `${choice} (unavailable)` : choice });
        if (unavailable) option.disabled = true;
        select.append(option);
      }
      select.value = field.default;
      return select;
    }
    if (field.type === "bool") {
      const box = element("input", { id, name: field.name, type: "checkbox" });
      box.checked = Boolean(field.default);
      return box;
    }
    if (field.type === "int" || field.type === "float" || field.type === "seed") {
      const input = element("input", {
        id,
        name: field.name,
        type: "number",
        inputmode: field.type === "float" ? "decimal" : "numeric",
        step: field.type === "float" ? "any" : "1",
        min: field.min,
        max: field.max,
      });
      if (field.type === "seed") input.placeholder = "random";
      input.value = field.default === null || field.default === undefined ? "" : String(field.default);
      return input;
    }
    if (field.type === "int_list") {
      const input = element("input", { id, name: field.name, type: "text", autocomplete: "off", spellcheck: "false" });
      input.value = (field.default || []).join(", ");
      return input;
    }
    const input = element("input", { id, name: field.name, type: "text", autocomplete: "off", spellcheck: "false" });
    if (field.name === "device") {
      const list = element("datalist", { id: `${id}-options` }, DEVICE_SUGGESTIONS.map((v) => element("option", { value: v })));
      this.form.append(list);
      input.setAttribute("list", list.id);
    }
    input.value = field.default ?? "";
    return input;
  }

  // The description of the chosen surrogate, cell or network, under its select.
  describe(name) {
    const note = this.notes.get(name);
    const control = this.controls.get(name);
    if (!note || !control) return;
    const info = this.descriptions[name] && this.descriptions[name].get(control.value);
    if (!info) {
      note.textContent = "";
      return;
    }
    if (name === "surrogate") {
      const aliases = info.aliases && info.aliases.length ? `; alias ${info.aliases.join(", ")}` : "";
      note.textContent = `${info.reference}: backward ${info.formula}${aliases}`;
    } else {
      note.textContent = info.equation ? `${info.description}: ${info.equation}` : info.description;
    }
  }

  // learn_beta / learn_threshold only mean something for cells that have that parameter.
  gateLearnFlags() {
    const cell = this.descriptions.cell_type.get(this.controls.get("cell_type")?.value);
    if (!cell) return;
    for (const [flag, what] of [["learn_beta", "beta"], ["learn_threshold", "threshold"]]) {
      const box = this.controls.get(flag);
      if (!box) continue;
      const allowed = (cell.learnable || []).includes(what);
      box.disabled = !allowed;
      if (!allowed) box.checked = false;
      this.notes.get(flag).textContent = allowed ? "" : `${cell.name} has no ${what} to learn`;
    }
  }

  // The request body. Numbers are sent as typed (an empty box as null) so the server, not the
  // browser, decides what is valid and says why.
  values() {
    const body = {};
    for (const field of this.fields) {
      const control = this.controls.get(field.name);
      if (field.type === "bool") {
        body[field.name] = control.checked;
      } else if (field.type === "int" || field.type === "float" || field.type === "seed") {
        const raw = control.value.trim();
        if (raw === "" && field.type === "seed") continue; // the server picks a seed and reports it
        body[field.name] = raw === "" ? null : Number(raw);
      } else if (field.type === "int_list") {
        const parts = control.value.split(/[\s,]+/).filter(Boolean);
        body[field.name] = parts.map((p) => (/^-?\d+(\.\d+)?$/.test(p) ? Number(p) : p));
      } else {
        body[field.name] = control.value.trim();
      }
    }
    return body;
  }

  set(name, value) {
    const control = this.controls.get(name);
    if (!control) throw new Error(`no field ${name}`);
    if (control.type === "checkbox") control.checked = Boolean(value);
    else control.value = Array.isArray(value) ? value.join(", ") : String(value ?? "");
    control.dispatchEvent(new Event("change", { bubbles: true }));
  }

  reset() {
    for (const field of this.fields) this.set(field.name, field.default);
    this.clearErrors();
  }

  clearError(name) {
    const error = this.errors.get(name);
    if (error) error.textContent = "";
    const control = this.controls.get(name);
    if (control) control.removeAttribute("aria-invalid");
  }

  clearErrors() {
    for (const name of this.errors.keys()) this.clearError(name);
    this.generalError.textContent = "";
  }

  // Show the server's reasons (400 {"fields": {name: reason}}); reasons for names that have no
  // control (e.g. "body") go in the form-wide message.
  showErrors(fields, message = "") {
    this.clearErrors();
    const other = [];
    let first = null;
    for (const [name, reason] of Object.entries(fields || {})) {
      const error = this.errors.get(name);
      if (!error) {
        other.push(`${name}: ${reason}`);
        continue;
      }
      error.textContent = reason;
      const control = this.controls.get(name);
      control.setAttribute("aria-invalid", "true");
      first = first || control;
    }
    this.generalError.textContent = other.length ? other.join("; ") : message;
    if (first) first.focus();
  }
}
