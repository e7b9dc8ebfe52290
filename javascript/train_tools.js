// Train Tools: only what gradio cannot do by itself.
//  - trainTools.install(ms): every `ms` milliseconds, while the Train Tools tab is on screen, press its
//    "Refresh progress" button. Each press is one short request (gradio 3.41's `every=` would instead keep one
//    never-ending request per page with the inputs it started with).
//  - trainTools.sendToTxt2img(prompt): add a prompt to the WebUI's txt2img prompt box and switch to txt2img.
//    Outside the WebUI (the standalone app) there is no such box: it returns false and the tab shows the prompt.
//  - Dropping files on a drop zone (#train_tools_drop_zone, #train_tools_reg_drop_zone) hands them to the upload
//    button's file input inside it (gradio 3.41's upload button has no drop target, and its File component loses
//    uploads, see dataset_panel.py); while they are sent, the zone says "Uploading N files…"
//    (data-train-tools-note, shown by style.css) until the import starts in its message box (the zone's id with
//    "import_message" for "drop_zone").
// The WebUI loads this file by itself; the tab also runs it on load (for the standalone app), so it must be
// harmless to run twice.
(function () {
    if (window.trainTools) {
        return;
    }

    function root() {
        if (typeof gradioApp === "function") {
            return gradioApp();
        }
        const app = document.querySelector("gradio-app");
        return (app && app.shadowRoot) || document;
    }

    function visible(element) {
        return element !== null && element.offsetParent !== null;
    }

    const NOTE = "data-train-tools-note";

    function dropZone(event) {
        const path = event.composedPath ? event.composedPath() : [event.target];
        for (const node of path) {
            if (node && typeof node.id === "string" && /^train_tools_(\w+_)?drop_zone$/.test(node.id)) {
                return node;
            }
        }
        return null;
    }

    function carriesFiles(event) {
        return !!event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
    }

    function showUploading(zone, count) {
        const template = trainTools.strings.uploading || "Uploading {n} files…";
        zone.setAttribute(NOTE, template.replace("{n}", String(count)));
        // The note goes when the import starts (gradio shows its progress in the import message) or has ended
        // (the message says something new); other events may rewrite the message meanwhile.
        const message = root().querySelector("#" + zone.id.replace(/drop_zone$/, "import_message"));
        if (!message || typeof MutationObserver !== "function") {
            return;
        }
        // The message's own text, without gradio's status tracker (".wrap": "queue: 1/1 | 0.4s", "processing"),
        // which also ticks for other events that write the message, such as the refresh after "Create project".
        const ownText = function () {
            const copy = message.cloneNode(true);
            copy.querySelectorAll(".wrap").forEach(function (wrap) {
                wrap.remove();
            });
            return copy.textContent.trim();
        };
        const before = ownText();
        const busy = function () {
            return message.querySelector(".wrap:not(.hide)") !== null;
        };
        // Such a pending event's progress is not the import's either: it must have gone once before one counts.
        let othersPending = busy();
        const observer = new MutationObserver(function () {
            const now = ownText();
            if (othersPending && !busy()) {
                othersPending = false;
            }
            if ((!othersPending && busy()) || (now && now !== before)) {
                zone.removeAttribute(NOTE);
                observer.disconnect();
            }
        });
        observer.observe(message, {childList: true, subtree: true, characterData: true, attributes: true});
    }

    document.addEventListener("dragover", function (event) {
        const zone = dropZone(event);
        if (zone && carriesFiles(event)) {
            event.preventDefault();
            event.dataTransfer.dropEffect = "copy";
            zone.classList.add("train_tools_dragover");
        }
    });
    document.addEventListener("dragleave", function (event) {
        const zone = dropZone(event);
        if (zone && !zone.contains(event.relatedTarget)) {
            zone.classList.remove("train_tools_dragover");
        }
    });
    document.addEventListener("drop", function (event) {
        const zone = dropZone(event);
        if (!zone || !carriesFiles(event)) {
            return;
        }
        event.preventDefault(); // not opened by the browser
        event.stopPropagation(); // nor handled by the WebUI's own drop handler (it expects a prompt box)
        zone.classList.remove("train_tools_dragover");
        const input = zone.querySelector("input[type=file]");
        if (input && event.dataTransfer.files.length) {
            input.files = event.dataTransfer.files;
            input.dispatchEvent(new Event("change", {bubbles: true}));
        }
    });
    document.addEventListener("change", function (event) {
        const zone = dropZone(event);
        const input = event.target;
        if (zone && input && input.type === "file" && input.files && input.files.length) {
            showUploading(zone, input.files.length);
        }
    }, true);

    const trainTools = {
        poller: null,
        strings: {},

        install: function (ms, strings) {
            if (strings) {
                trainTools.strings = strings;
            }
            if (trainTools.poller !== null) {
                return;
            }
            trainTools.poller = setInterval(function () {
                const app = root();
                const button = app.querySelector("#train_tools_poll");
                const tab = app.querySelector("#train_tools_root");
                if (!button || document.hidden || button.disabled) {
                    return;
                }
                if (tab && !visible(tab)) {
                    return; // another WebUI tab is shown
                }
                button.click();
            }, Math.max(500, ms || 2000));
        },

        sendToTxt2img: function (prompt) {
            const app = root();
            const box = app.querySelector("#txt2img_prompt textarea");
            if (!box || !prompt) {
                return false;
            }
            const current = box.value.trim();
            if (!current.includes(prompt)) {
                box.value = current ? current.replace(/[,\s]*$/, "") + ", " + prompt : prompt;
                box.dispatchEvent(new Event("input", {bubbles: true}));
            }
            if (typeof switch_to_txt2img === "function") {
                switch_to_txt2img();
            } else {
                const tabs = app.querySelectorAll("#tabs > div > button, #tabs button");
                for (const tab of tabs) {
                    if (tab.textContent.trim().toLowerCase() === "txt2img") { // Forge labels it "Txt2img"
                        tab.click();
                        break;
                    }
                }
            }
            return true;
        },
    };

    window.trainTools = trainTools;
})();
