// Train Tools: only what gradio cannot do by itself.
//  - trainTools.install(ms): every `ms` milliseconds, while the Train Tools tab is on screen, press its
//    "Refresh progress" button. Each press is one short request (gradio 3.41's `every=` would instead keep one
//    never-ending request per page with the inputs it started with).
//  - trainTools.sendToTxt2img(prompt): add a prompt to the WebUI's txt2img prompt box and switch to txt2img.
//    Outside the WebUI (the standalone app) there is no such box: it returns false and the tab shows the prompt.
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

    const trainTools = {
        poller: null,

        install: function (ms) {
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
