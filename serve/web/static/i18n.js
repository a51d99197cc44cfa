// The page's words in English, Traditional Chinese and Simplified Chinese, and how they reach the page.
//
// Static text is marked in index.html: data-i18n="key" sets an element's text, data-i18n-placeholder,
// data-i18n-title and data-i18n-aria-label set those attributes. app.js sets dynamic text with
// I18N.say(element, key, args), which marks the element the same way, so a language switch redraws it.
// "{name}" in a string is replaced by args.name; an argument that is a server error ({code, message}) is
// shown as I18N.errorText gives it.
"use strict";

const STRINGS = {
  en: {
    "title": "Qwen2.5-Omni transcription",
    "ui.language": "Page language",
    "health.title": "server state",
    "health.checking": "checking…",
    "health.loaded": "model loaded",
    "health.not_loaded": "model not loaded (loads on first use)",
    "health.unreachable": "server unreachable",
    "drop.title": "Drop an audio or video file here",
    "drop.hint": "or click to choose one (MP3, WAV, M4A, FLAC, OGG, MP4…)",
    "option.language": "Language",
    "language.auto": "auto",
    "language.zh": "Chinese (zh)",
    "language.en": "English (en)",
    "language.yue": "Cantonese (yue)",
    "language.ja": "Japanese (ja)",
    "language.ko": "Korean (ko)",
    "language.de": "German (de)",
    "language.fr": "French (fr)",
    "language.es": "Spanish (es)",
    "language.ru": "Russian (ru)",
    "option.script": "Chinese script",
    "script.none": "as spoken",
    "script.s2t": "Traditional (s2t)",
    "script.s2tw": "Traditional, Taiwan (s2tw)",
    "script.s2twp": "Traditional, Taiwan phrases (s2twp)",
    "script.s2hk": "Traditional, Hong Kong (s2hk)",
    "script.t2s": "Simplified (t2s)",
    "option.task": "Output",
    "task.transcribe": "transcript (as spoken)",
    "task.en": "translation into English",
    "task.zh": "translation into Chinese",
    "option.segment": "Segment (s)",
    "option.prompt": "Context words (names, jargon)",
    "option.prompt_placeholder": "optional",
    "option.apikey": "API key",
    "option.apikey_placeholder": "only if the server requires one",
    "start": "Transcribe",
    "job.title": "Transcript",
    "player.label": "your file, played from this browser's copy",
    "state.uploading": "uploading…",
    "state.queued": "queued",
    "state.running": "transcribing: {done} of {total} s",
    "state.eta": "about {seconds} s left",
    "state.reconnecting": "reconnecting to the server…",
    "state.waiting": "waiting for the server ({reason})…",
    "state.loading": "opening the job…",
    "state.done": "done: {duration} s of audio",
    "state.failed": "failed",
    "state.cancelled": "cancelled",
    "transcript.none": "No speech was found.",
    "segment.play": "play from {time}",
    "download": "Download .{format}",
    "downloads.label": "downloads",
    "recent.title": "Recent jobs",
    "recent.refresh": "Refresh",
    "recent.from_server": "The jobs of this API key, newest first.",
    "recent.from_browser": "The jobs this browser submitted, newest first.",
    "recent.none": "No jobs yet.",
    "recent.open": "open {name}",
    "status.processing": "processing",
    "status.completed": "completed",
    "status.failed": "failed",
    "status.cancelled": "cancelled",
    // The server's own messages are English: they are shown as they are, except these, made by the page.
    "error.shown": "{error}",
    "error.detailed": "{summary} ({detail})",
    "error.network": "the server could not be reached",
    "error.http": "the server answered HTTP {status}",
  },

  "zh-Hant": {
    "title": "Qwen2.5-Omni 語音轉錄",
    "ui.language": "介面語言",
    "health.title": "伺服器狀態",
    "health.checking": "檢查中…",
    "health.loaded": "模型已載入",
    "health.not_loaded": "模型未載入（首次使用時載入）",
    "health.unreachable": "無法連線到伺服器",
    "drop.title": "將音訊或影片檔拖放到這裡",
    "drop.hint": "或點選以選擇檔案（MP3、WAV、M4A、FLAC、OGG、MP4…）",
    "option.language": "語言",
    "language.auto": "自動偵測",
    "language.zh": "中文 (zh)",
    "language.en": "英文 (en)",
    "language.yue": "粵語 (yue)",
    "language.ja": "日文 (ja)",
    "language.ko": "韓文 (ko)",
    "language.de": "德文 (de)",
    "language.fr": "法文 (fr)",
    "language.es": "西班牙文 (es)",
    "language.ru": "俄文 (ru)",
    "option.script": "繁簡轉換",
    "script.none": "不轉換",
    "script.s2t": "繁體 (s2t)",
    "script.s2tw": "繁體，台灣 (s2tw)",
    "script.s2twp": "繁體，台灣用語 (s2twp)",
    "script.s2hk": "繁體，香港 (s2hk)",
    "script.t2s": "簡體 (t2s)",
    "option.task": "輸出",
    "task.transcribe": "逐字稿（原語言）",
    "task.en": "翻譯成英文",
    "task.zh": "翻譯成中文",
    "option.segment": "分段長度（秒）",
    "option.prompt": "提示詞（人名、專有名詞）",
    "option.prompt_placeholder": "選填",
    "option.apikey": "API 金鑰",
    "option.apikey_placeholder": "僅在伺服器要求時填寫",
    "start": "開始轉錄",
    "job.title": "逐字稿",
    "player.label": "您的檔案（由瀏覽器中的副本播放）",
    "state.uploading": "上傳中…",
    "state.queued": "排隊中",
    "state.running": "轉錄中：{done} / {total} 秒",
    "state.eta": "約剩 {seconds} 秒",
    "state.reconnecting": "正在重新連線到伺服器…",
    "state.waiting": "等待伺服器（{reason}）…",
    "state.loading": "正在開啟工作…",
    "state.done": "完成：{duration} 秒音訊",
    "state.failed": "失敗",
    "state.cancelled": "已取消",
    "transcript.none": "未偵測到語音。",
    "segment.play": "從 {time} 開始播放",
    "download": "下載 .{format}",
    "downloads.label": "下載",
    "recent.title": "最近的工作",
    "recent.refresh": "重新整理",
    "recent.from_server": "此 API 金鑰的工作，最新的在前。",
    "recent.from_browser": "從這個瀏覽器提交的工作，最新的在前。",
    "recent.none": "尚無工作。",
    "recent.open": "開啟 {name}",
    "status.processing": "處理中",
    "status.completed": "已完成",
    "status.failed": "失敗",
    "status.cancelled": "已取消",
    "error.shown": "{error}",
    "error.detailed": "{summary}（{detail}）",
    "error.network": "無法連線到伺服器",
    "error.http": "伺服器回應 HTTP {status}",
    "error.unauthorized": "需要有效的 API 金鑰",
    "error.forbidden_host": "伺服器拒絕了這個主機名稱",
    "error.invalid_parameter": "參數無效",
    "error.missing_file": "沒有收到檔案",
    "error.empty_file": "檔案是空的",
    "error.not_found": "找不到這個工作（可能已過期）",
    "error.conflict": "這個工作目前無法執行此操作",
    "error.unsupported_media": "無法將檔案解碼為音訊",
    "error.payload_too_large": "檔案超過伺服器允許的大小",
    "error.rate_limited": "請求過於頻繁，請稍後再試",
    "error.model_unavailable": "模型無法載入",
    "error.queue_full": "伺服器的佇列已滿，請稍後再試",
    "error.shutting_down": "伺服器正在關閉，請稍後再試",
    "error.store_unavailable": "工作儲存區暫時無法使用，請稍候",
    "error.insufficient_storage": "伺服器的磁碟空間不足",
    "error.gpu_out_of_memory": "GPU 記憶體不足，請改用較短的分段",
    "error.interrupted": "伺服器重新啟動，工作中斷，請重新提交",
    "error.crash_loop": "這個工作多次使伺服器當機，已停止重試",
    "error.cancelled": "工作已取消",
    "error.transcription_failed": "轉錄失敗",
    "error.internal_error": "伺服器內部錯誤",
  },

  "zh-Hans": {
    "title": "Qwen2.5-Omni 语音转录",
    "ui.language": "界面语言",
    "health.title": "服务器状态",
    "health.checking": "检查中…",
    "health.loaded": "模型已加载",
    "health.not_loaded": "模型未加载（首次使用时加载）",
    "health.unreachable": "无法连接服务器",
    "drop.title": "将音频或视频文件拖放到这里",
    "drop.hint": "或点击选择文件（MP3、WAV、M4A、FLAC、OGG、MP4…）",
    "option.language": "语言",
    "language.auto": "自动检测",
    "language.zh": "中文 (zh)",
    "language.en": "英语 (en)",
    "language.yue": "粤语 (yue)",
    "language.ja": "日语 (ja)",
    "language.ko": "韩语 (ko)",
    "language.de": "德语 (de)",
    "language.fr": "法语 (fr)",
    "language.es": "西班牙语 (es)",
    "language.ru": "俄语 (ru)",
    "option.script": "繁简转换",
    "script.none": "不转换",
    "script.s2t": "繁体 (s2t)",
    "script.s2tw": "繁体，台湾 (s2tw)",
    "script.s2twp": "繁体，台湾用语 (s2twp)",
    "script.s2hk": "繁体，香港 (s2hk)",
    "script.t2s": "简体 (t2s)",
    "option.task": "输出",
    "task.transcribe": "逐字稿（原语言）",
    "task.en": "翻译成英文",
    "task.zh": "翻译成中文",
    "option.segment": "分段长度（秒）",
    "option.prompt": "提示词（人名、专有名词）",
    "option.prompt_placeholder": "选填",
    "option.apikey": "API 密钥",
    "option.apikey_placeholder": "仅在服务器要求时填写",
    "start": "开始转录",
    "job.title": "转录文本",
    "player.label": "您的文件（由浏览器中的副本播放）",
    "state.uploading": "上传中…",
    "state.queued": "排队中",
    "state.running": "转录中：{done} / {total} 秒",
    "state.eta": "约剩 {seconds} 秒",
    "state.reconnecting": "正在重新连接服务器…",
    "state.waiting": "等待服务器（{reason}）…",
    "state.loading": "正在打开任务…",
    "state.done": "完成：{duration} 秒音频",
    "state.failed": "失败",
    "state.cancelled": "已取消",
    "transcript.none": "未检测到语音。",
    "segment.play": "从 {time} 开始播放",
    "download": "下载 .{format}",
    "downloads.label": "下载",
    "recent.title": "最近的任务",
    "recent.refresh": "刷新",
    "recent.from_server": "此 API 密钥的任务，最新的在前。",
    "recent.from_browser": "从此浏览器提交的任务，最新的在前。",
    "recent.none": "暂无任务。",
    "recent.open": "打开 {name}",
    "status.processing": "处理中",
    "status.completed": "已完成",
    "status.failed": "失败",
    "status.cancelled": "已取消",
    "error.shown": "{error}",
    "error.detailed": "{summary}（{detail}）",
    "error.network": "无法连接服务器",
    "error.http": "服务器返回 HTTP {status}",
    "error.unauthorized": "需要有效的 API 密钥",
    "error.forbidden_host": "服务器拒绝了此主机名",
    "error.invalid_parameter": "参数无效",
    "error.missing_file": "没有收到文件",
    "error.empty_file": "文件为空",
    "error.not_found": "找不到此任务（可能已过期）",
    "error.conflict": "此任务当前无法执行该操作",
    "error.unsupported_media": "无法将文件解码为音频",
    "error.payload_too_large": "文件超过服务器允许的大小",
    "error.rate_limited": "请求过于频繁，请稍后重试",
    "error.model_unavailable": "模型无法加载",
    "error.queue_full": "服务器队列已满，请稍后重试",
    "error.shutting_down": "服务器正在关闭，请稍后重试",
    "error.store_unavailable": "任务存储暂时不可用，请稍候",
    "error.insufficient_storage": "服务器磁盘空间不足",
    "error.gpu_out_of_memory": "GPU 显存不足，请改用较短的分段",
    "error.interrupted": "服务器重启，任务中断，请重新提交",
    "error.crash_loop": "此任务多次导致服务器崩溃，已停止重试",
    "error.cancelled": "任务已取消",
    "error.transcription_failed": "转录失败",
    "error.internal_error": "服务器内部错误",
  },
};

const LANGUAGES = Object.keys(STRINGS);
const LANGUAGE_STORE = "qwen-omni-ui-language";

const I18N = {
  lang: "en",

  // The page language for a browser's preferences (navigator.languages): the first one we have.
  pick(preferences) {
    for (const tag of preferences || []) {
      const lower = String(tag).toLowerCase();
      if (lower === "en" || lower.startsWith("en-")) return "en";
      if (lower !== "zh" && !lower.startsWith("zh-")) continue;
      if (/-hant\b/.test(lower)) return "zh-Hant";
      if (/-hans\b/.test(lower)) return "zh-Hans";
      return /-(tw|hk|mo)\b/.test(lower) ? "zh-Hant" : "zh-Hans";
    }
    return "en";
  },

  // The remembered choice, else the browser's.
  initial() {
    const saved = localStorage.getItem(LANGUAGE_STORE);
    return LANGUAGES.includes(saved) ? saved : I18N.pick(navigator.languages || [navigator.language]);
  },

  use(lang, remember = false) {
    I18N.lang = LANGUAGES.includes(lang) ? lang : "en";
    if (remember) localStorage.setItem(LANGUAGE_STORE, I18N.lang);
    document.documentElement.lang = I18N.lang;
    I18N.apply(document);
  },

  t(key, args = {}) {
    const text = STRINGS[I18N.lang][key] ?? STRINGS.en[key] ?? key;
    return text.replace(/\{(\w+)\}/g, (_, name) => I18N.arg(args[name]));
  },

  arg(value) {
    if (value && typeof value === "object") return I18N.errorText(value);
    return value == null ? "" : String(value);
  },

  // A server error in the page's language: the server's own words in English; elsewhere the translation of
  // its code, followed by the server's words (what a bug report needs) when it has a translation.
  errorText(error) {
    const key = `error.${error.code}`;
    if (error.code === "http" || error.code === "network") return I18N.t(key, error);
    if (I18N.lang === "en" || !(key in STRINGS[I18N.lang])) return error.message;
    return I18N.t("error.detailed", { summary: I18N.t(key), detail: error.message });
  },

  // Set an element's text (or, with attr, one of its attributes) to a string, and keep it in that string.
  say(element, key, args = {}, attr = null) {
    element.setAttribute(attr ? `data-i18n-${attr}` : "data-i18n", key);
    element.dataset.i18nArgs = JSON.stringify(args);
    I18N.render(element);
  },

  render(element) {
    const args = element.dataset.i18nArgs ? JSON.parse(element.dataset.i18nArgs) : {};
    const key = element.dataset.i18n;
    if (key !== undefined) element.textContent = key ? I18N.t(key, args) : "";  // "": no text
    for (const attr of ["placeholder", "title", "aria-label"]) {
      const key = element.getAttribute(`data-i18n-${attr}`);
      if (key) element.setAttribute(attr, I18N.t(key, args));
    }
  },

  apply(root) {
    const marked = "[data-i18n], [data-i18n-placeholder], [data-i18n-title], [data-i18n-aria-label]";
    root.querySelectorAll(marked).forEach(I18N.render);
  },
};
