// splatshot_jax viewer: a small WebGL2 3D Gaussian Splatting renderer.
//
// It draws what splatshot_jax.render draws (render/project.py, render/composite.py):
//   EWA projection  Σ' = J W Σ Wᵀ Jᵀ + 0.3·I, J evaluated at the view-frustum-clamped mean;
//   radius          ceil(sqrt(2 ln(255 o) λ_max)), culled when z ≤ 0.01, det ≤ 0 or o < 1/255;
//   colour          SH (3DGS basis and signs) on dir = normalize(mean − camera centre), +0.5, ≥ 0;
//   α               min(α_max, o·exp(−½ dᵀ conic d)) with d = pixel centre − mean, skipped if < 1/255
//                   (α_max: the page's meta.alpha_max, the clamp the avatar was made with; 0.99 when absent)
//                   or the exponent is positive;
//   blending        back to front over the background (equal to the renderer's front-to-back sum
//                   C = Σ fᵢαᵢTᵢ + T_final·bg, without its T < 1e-4 early stop).
// The Gaussians are depth-sorted on the CPU (a counting sort on 16-bit depth keys) whenever the
// camera moves; every per-Gaussian quantity is computed in the vertex shader, one quad per Gaussian.
//
// Cameras are OpenCV world-to-camera (x right, y down, z forward) with K in pixels, pixel centres
// at integer + 0.5, exactly as splatshot_jax.cameras.Camera.
//
// URL fragment: #camera=8&bg=black&w=128&h=128&ui=0
//   camera  index into the embedded camera list;  bg  white | black | grey | r,g,b (0..1);
//   yaw, pitch  degrees to orbit from that camera (as cameras.orbit_rig: yaw about up, pitch up);
//   w, h    canvas size in device pixels (default: the window);  ui=0  hides the panel.
// body[data-state] goes loading -> ready (after the first frame is drawn) or error;
// body[data-viewmat] is the current world-to-camera matrix (3 rows of 4), for tests.
"use strict";

(function () {
  const body = document.body;

  function fail(msg) {
    const el = document.getElementById("error");
    el.textContent = "splatshot viewer: " + msg;
    el.style.display = "block";
    body.dataset.state = "error";
    body.dataset.error = msg;
    document.title = "viewer error";
  }
  window.addEventListener("error", (e) => fail(String(e.message || e)));

  // ---------------------------------------------------------------------------------------------
  // Embedded data: JSON metadata + base64 of a little-endian blob of planar arrays.

  function halfTable() {
    // float16 bit pattern -> float32, all 65536 of them.
    const t = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
      if (e === 0) t[h] = s * m * Math.pow(2, -24);
      else if (e === 31) t[h] = m ? NaN : s * Infinity;
      else t[h] = s * (1 + m / 1024) * Math.pow(2, e - 15);
    }
    return t;
  }

  function readData() {
    let meta;
    try {
      meta = JSON.parse(document.getElementById("splat-meta").textContent);
    } catch (e) {
      throw new Error("cannot parse the embedded metadata (" + e.message + ")");
    }
    if (meta.format !== "splatshot-viewer-1") {
      throw new Error("unknown data format " + JSON.stringify(meta.format) + " (expected splatshot-viewer-1)");
    }
    let bytes;
    try {
      const b64 = document.getElementById("splat-data").textContent.replace(/\s+/g, "");
      const bin = atob(b64);
      bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    } catch (e) {
      throw new Error("cannot decode the embedded Gaussians (base64: " + e.message + ")");
    }
    if (bytes.length !== meta.num_bytes) {
      throw new Error("embedded Gaussians hold " + bytes.length + " bytes, metadata says " + meta.num_bytes);
    }
    const n = meta.num_gaussians, K = (meta.sh_degree + 1) * (meta.sh_degree + 1);
    const want = { means: 3 * n, log_scales: 3 * n, quats: 4 * n, opacities: n, sh: 3 * K * n };
    const u16 = {};
    for (const key in want) {
      const sec = meta.sections[key];
      if (!sec || sec[1] !== want[key] || sec[0] % 2 || sec[0] + 2 * sec[1] > bytes.length) {
        throw new Error("section '" + key + "' is missing or has the wrong size (expected " + want[key] + " values)");
      }
      u16[key] = new Uint16Array(bytes.buffer, sec[0], sec[1]);
    }
    const half = halfTable();
    const means = new Float32Array(3 * n);
    for (let i = 0; i < 3 * n; i++) {
      const a = i % 3;  // uint16 quantised in the bounding box
      means[i] = meta.mean_lo[a] + (u16.means[i] / 65535) * (meta.mean_hi[a] - meta.mean_lo[a]);
    }
    const f = (arr) => { const o = new Float32Array(arr.length); for (let i = 0; i < arr.length; i++) o[i] = half[arr[i]]; return o; };
    const g = { n, K, degree: meta.sh_degree, means, logScales: f(u16.log_scales), quats: f(u16.quats),
                opacities: f(u16.opacities), sh: f(u16.sh) };
    for (const key of ["logScales", "quats", "opacities", "sh"]) {
      for (let i = 0; i < g[key].length; i++) {
        if (!isFinite(g[key][i])) throw new Error("non-finite value in '" + key + "' at index " + i);
      }
    }
    return { meta, g };
  }

  // ---------------------------------------------------------------------------------------------
  // Shaders.

  const VS = `#version 300 es
precision highp float; precision highp int; precision highp sampler2D;
uniform sampler2D u_data;   // RGBA32F, u_stride texels per Gaussian
uniform int u_stride, u_texw, u_degree;
uniform vec3 u_R0, u_R1, u_R2, u_t;   // world-to-camera rows and translation (OpenCV)
uniform vec4 u_K;                     // fx, fy, cx, cy in canvas pixels
uniform vec2 u_size;                  // canvas width, height
uniform vec3 u_center;                // camera centre, world
in uint a_index;
flat out vec3 v_color;
flat out vec4 v_conic;                // a, b, c, opacity
flat out vec2 v_mean;                 // pixels, y down
float s[48];

const float C0 = 0.28209479177387814, C1 = 0.4886025119029199;
vec4 texel(int i, int j) { int k = i * u_stride + j; return texelFetch(u_data, ivec2(k % u_texw, k / u_texw), 0); }
vec3 sh(int k) { return vec3(s[3 * k], s[3 * k + 1], s[3 * k + 2]); }

vec3 evalSH(vec3 d) {
  vec3 o = C0 * sh(0);
  if (u_degree < 1) return o;
  float x = d.x, y = d.y, z = d.z;
  o += -C1 * y * sh(1) + C1 * z * sh(2) - C1 * x * sh(3);
  if (u_degree < 2) return o;
  float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  o += 1.0925484305920792 * xy * sh(4) - 1.0925484305920792 * yz * sh(5)
     + 0.31539156525252005 * (2.0 * zz - xx - yy) * sh(6) - 1.0925484305920792 * xz * sh(7)
     + 0.5462742152960396 * (xx - yy) * sh(8);
  if (u_degree < 3) return o;
  o += -0.5900435899266435 * y * (3.0 * xx - yy) * sh(9) + 2.890611442640554 * xy * z * sh(10)
     - 0.4570457994644658 * y * (4.0 * zz - xx - yy) * sh(11)
     + 0.3731763325901154 * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh(12)
     - 0.4570457994644658 * x * (4.0 * zz - xx - yy) * sh(13) + 1.445305721320277 * z * (xx - yy) * sh(14)
     - 0.5900435899266435 * x * (xx - 3.0 * yy) * sh(15);
  return o;
}

void main() {
  int i = int(a_index);
  vec4 t0 = texel(i, 0), t1 = texel(i, 1), q = texel(i, 2);
  vec3 m = t0.xyz;
  float op = t0.w;
  vec3 p = vec3(dot(u_R0, m), dot(u_R1, m), dot(u_R2, m)) + u_t;
  gl_Position = vec4(0.0, 0.0, 2.0, 1.0);  // culled unless set below
  if (p.z <= 0.01 || op < 1.0 / 255.0) return;
  float fx = u_K.x, fy = u_K.y, cx = u_K.z, cy = u_K.w, W = u_size.x, H = u_size.y;
  // Jacobian at the mean clamped to 1.3x the field of view, as 3DGS / gsplat.
  float limxp = (W - cx) / fx + 0.3 * W / (2.0 * fx), limxn = cx / fx + 0.3 * W / (2.0 * fx);
  float limyp = (H - cy) / fy + 0.3 * H / (2.0 * fy), limyn = cy / fy + 0.3 * H / (2.0 * fy);
  float tx = p.z * clamp(p.x / p.z, -limxn, limxp), ty = p.z * clamp(p.y / p.z, -limyn, limyp);
  vec3 j0 = (fx / p.z) * u_R0 - (fx * tx / (p.z * p.z)) * u_R2;  // rows of J·W
  vec3 j1 = (fy / p.z) * u_R1 - (fy * ty / (p.z * p.z)) * u_R2;
  // Σ = M Mᵀ with M = R(q) diag(exp(log_scales)).
  q = q / length(q);
  float w = q.x, x = q.y, y = q.z, z = q.w;
  mat3 Rq = mat3(1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y + w * z), 2.0 * (x * z - w * y),   // column 0
                 2.0 * (x * y - w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z + w * x),   // column 1
                 2.0 * (x * z + w * y), 2.0 * (y * z - w * x), 1.0 - 2.0 * (x * x + y * y));  // column 2
  mat3 M = Rq * mat3(exp(t1.x), 0.0, 0.0, 0.0, exp(t1.y), 0.0, 0.0, 0.0, exp(t1.z));
  vec3 a0 = j0 * M, a1 = j1 * M;  // rows of J W M (row vector times matrix)
  float a = dot(a0, a0) + 0.3, b = dot(a0, a1), c = dot(a1, a1) + 0.3;
  float det = a * c - b * b;
  if (det <= 0.0) return;
  float mid = 0.5 * (a + c);
  float lam = mid + sqrt(max(mid * mid - det, 0.0));
  float radius = ceil(sqrt(2.0 * log(max(255.0 * op, 1.0)) * lam));
  if (radius <= 0.0) return;
  vec2 mean = vec2(fx * p.x / p.z + cx, fy * p.y / p.z + cy);

  int nTex = (3 * (u_degree + 1) * (u_degree + 1) + 3) / 4;
  for (int k = 0; k < 12; k++) {
    if (k >= nTex) break;
    vec4 v = texel(i, 3 + k);
    s[4 * k] = v.x; s[4 * k + 1] = v.y; s[4 * k + 2] = v.z; s[4 * k + 3] = v.w;
  }
  v_color = max(evalSH(normalize(m - u_center)) + 0.5, 0.0);
  v_conic = vec4(c / det, -b / det, a / det, op);
  v_mean = mean;
  vec2 corner = vec2(float(gl_VertexID & 1), float(gl_VertexID >> 1)) * 2.0 - 1.0;
  vec2 px = mean + corner * radius;
  gl_Position = vec4(2.0 * px.x / W - 1.0, 1.0 - 2.0 * px.y / H, 0.0, 1.0);
}`;

  const FS = `#version 300 es
precision highp float;
uniform vec2 u_size;
uniform float u_alphaMax;             // the rasterizer's α clamp the avatar was fitted with
flat in vec3 v_color;
flat in vec4 v_conic;
flat in vec2 v_mean;
out vec4 outColor;
void main() {
  vec2 d = vec2(gl_FragCoord.x, u_size.y - gl_FragCoord.y) - v_mean;  // pixel centre, y down
  float power = -0.5 * (v_conic.x * d.x * d.x + v_conic.z * d.y * d.y) - v_conic.y * d.x * d.y;
  if (power > 0.0) discard;
  float alpha = min(u_alphaMax, v_conic.w * exp(power));
  if (alpha < 1.0 / 255.0) discard;
  outColor = vec4(v_color * alpha, alpha);  // premultiplied; blended back to front
}`;

  // Final pass: the float accumulation target to the canvas, clipped to [0, 1] once at the end as
  // the renderer's images are (8-bit targets would clip every Gaussian's colour·α instead).
  const BLIT_VS = `#version 300 es
void main() { gl_Position = vec4(float((gl_VertexID & 1) * 4 - 1), float((gl_VertexID >> 1) * 4 - 1), 0.0, 1.0); }`;
  const BLIT_FS = `#version 300 es
precision highp float;
uniform sampler2D u_accum;
out vec4 outColor;
void main() { outColor = vec4(clamp(texelFetch(u_accum, ivec2(gl_FragCoord.xy), 0).rgb, 0.0, 1.0), 1.0); }`;

  function compile(gl, type, src) {
    const sh = gl.createShader(type);
    gl.shaderSource(sh, src);
    gl.compileShader(sh);
    if (!gl.getShaderParameter(sh, gl.COMPILE_STATUS)) throw new Error("shader: " + gl.getShaderInfoLog(sh));
    return sh;
  }

  function link(gl, vs, fs) {
    const prog = gl.createProgram();
    gl.attachShader(prog, compile(gl, gl.VERTEX_SHADER, vs));
    gl.attachShader(prog, compile(gl, gl.FRAGMENT_SHADER, fs));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error("shader link: " + gl.getProgramInfoLog(prog));
    return prog;
  }

  // ---------------------------------------------------------------------------------------------
  // Small 3-vector / 3x3 (row-major arrays) helpers for the camera.

  const dot3 = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const add3 = (a, b, s = 1) => [a[0] + s * b[0], a[1] + s * b[1], a[2] + s * b[2]];
  const row = (R, i) => [R[3 * i], R[3 * i + 1], R[3 * i + 2]];
  const matmul3 = (A, B) => { const C = new Array(9).fill(0); for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) for (let k = 0; k < 3; k++) C[3 * i + j] += A[3 * i + k] * B[3 * k + j]; return C; };
  const transpose3 = (A) => [A[0], A[3], A[6], A[1], A[4], A[7], A[2], A[5], A[8]];
  const apply3 = (A, v) => [dot3(row(A, 0), v), dot3(row(A, 1), v), dot3(row(A, 2), v)];
  function axisAngle(u, th) {  // Rodrigues, u unit
    const c = Math.cos(th), s = Math.sin(th), C = 1 - c, [x, y, z] = u;
    return [c + x * x * C, x * y * C - z * s, x * z * C + y * s,
            y * x * C + z * s, c + y * y * C, y * z * C - x * s,
            z * x * C - y * s, z * y * C + x * s, c + z * z * C];
  }
  const centerOf = (cam) => { const Rt = transpose3(cam.R); return apply3(Rt, cam.t).map((v) => -v); };

  // ---------------------------------------------------------------------------------------------

  function parseHash() {
    const out = {};
    for (const kv of location.hash.replace(/^#/, "").split("&")) {
      if (!kv) continue;
      const [k, v = ""] = kv.split("=");
      out[decodeURIComponent(k)] = decodeURIComponent(v);
    }
    return out;
  }

  const BACKGROUNDS = { white: [1, 1, 1], black: [0, 0, 0], grey: [0.5, 0.5, 0.5] };
  function parseBg(s, fallback) {
    if (s in BACKGROUNDS) return BACKGROUNDS[s];
    const v = s.split(",").map(Number);
    return v.length === 3 && v.every((x) => isFinite(x)) ? v : fallback;
  }

  function main() {
    const { meta, g } = readData();
    const opts = parseHash();
    if (opts.ui === "0") body.classList.add("noui");
    const canvas = document.getElementById("canvas");
    const gl = canvas.getContext("webgl2", { antialias: false, alpha: false, depth: false,
                                             preserveDrawingBuffer: true, premultipliedAlpha: true });
    if (!gl) throw new Error("this browser has no WebGL2");
    canvas.addEventListener("webglcontextlost", () => fail("the WebGL context was lost"));

    // Per-Gaussian texels: (mean, opacity), (log_scales, 0), quat wxyz, SH coefficients (k, channel).
    const stride = 3 + Math.ceil((3 * g.K) / 4);
    const texw = Math.min(4096, gl.getParameter(gl.MAX_TEXTURE_SIZE));
    const texh = Math.ceil((g.n * stride) / texw);
    if (texh > gl.getParameter(gl.MAX_TEXTURE_SIZE)) throw new Error(g.n + " Gaussians do not fit in a texture here");
    const tex = new Float32Array(texw * texh * 4);
    for (let i = 0; i < g.n; i++) {
      const o = 4 * i * stride;
      tex.set(g.means.subarray(3 * i, 3 * i + 3), o);
      tex[o + 3] = g.opacities[i];
      tex.set(g.logScales.subarray(3 * i, 3 * i + 3), o + 4);
      tex.set(g.quats.subarray(4 * i, 4 * i + 4), o + 8);
      tex.set(g.sh.subarray(3 * g.K * i, 3 * g.K * (i + 1)), o + 12);
    }
    const prog = link(gl, VS, FS);
    gl.useProgram(prog);
    const U = {};
    for (const name of ["u_data", "u_stride", "u_texw", "u_degree", "u_R0", "u_R1", "u_R2", "u_t", "u_K", "u_size", "u_center", "u_alphaMax"]) {
      U[name] = gl.getUniformLocation(prog, name);
    }
    const alphaMax = typeof meta.alpha_max === "number" ? meta.alpha_max : 0.99;
    gl.uniform1f(U.u_alphaMax, alphaMax);
    body.dataset.alphaMax = String(alphaMax);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, gl.createTexture());
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA32F, texw, texh, 0, gl.RGBA, gl.FLOAT, tex);
    gl.uniform1i(U.u_data, 0);
    gl.uniform1i(U.u_stride, stride);
    gl.uniform1i(U.u_texw, texw);
    gl.uniform1i(U.u_degree, g.degree);

    const vao = gl.createVertexArray();
    gl.bindVertexArray(vao);
    const indexBuf = gl.createBuffer();
    const loc = gl.getAttribLocation(prog, "a_index");
    gl.bindBuffer(gl.ARRAY_BUFFER, indexBuf);
    gl.bufferData(gl.ARRAY_BUFFER, 4 * g.n, gl.DYNAMIC_DRAW);
    gl.enableVertexAttribArray(loc);
    gl.vertexAttribIPointer(loc, 1, gl.UNSIGNED_INT, 0, 0);
    gl.vertexAttribDivisor(loc, 1);
    gl.disable(gl.DEPTH_TEST);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);  // premultiplied "over", back to front

    // Accumulation target: RGBA16F where the browser can render to it, else the canvas itself.
    const floatTarget = !!gl.getExtension("EXT_color_buffer_float");
    let blit = null, accumTex = null, fbo = null;
    if (floatTarget) {
      blit = link(gl, BLIT_VS, BLIT_FS);
      gl.useProgram(blit);
      gl.uniform1i(gl.getUniformLocation(blit, "u_accum"), 1);
      gl.useProgram(prog);
      fbo = gl.createFramebuffer();
      accumTex = gl.createTexture();
    }
    function resizeTarget(w, h) {
      if (!floatTarget) return;
      gl.activeTexture(gl.TEXTURE1);
      gl.bindTexture(gl.TEXTURE_2D, accumTex);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA16F, w, h, 0, gl.RGBA, gl.HALF_FLOAT, null);
      gl.bindFramebuffer(gl.FRAMEBUFFER, fbo);
      gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, accumTex, 0);
      if (gl.checkFramebufferStatus(gl.FRAMEBUFFER) !== gl.FRAMEBUFFER_COMPLETE) throw new Error("cannot render to a float16 target");
      gl.bindFramebuffer(gl.FRAMEBUFFER, null);
      gl.activeTexture(gl.TEXTURE0);
    }

    // Depth sort: counting sort on 16-bit keys of camera-space z, farthest first.
    const order = new Uint32Array(g.n), depth = new Float32Array(g.n), keys = new Uint16Array(g.n);
    const counts = new Uint32Array(65536);
    function sortByDepth(cam) {
      const r2 = row(cam.R, 2);
      let lo = Infinity, hi = -Infinity;
      for (let i = 0; i < g.n; i++) {
        depth[i] = r2[0] * g.means[3 * i] + r2[1] * g.means[3 * i + 1] + r2[2] * g.means[3 * i + 2] + cam.t[2];
        const z = depth[i];  // the float32 value: lo and hi must bound what is keyed below
        if (z < lo) lo = z;
        if (z > hi) hi = z;
      }
      const scale = hi > lo ? 65535 / (hi - lo) : 0;
      counts.fill(0);
      for (let i = 0; i < g.n; i++) {
        keys[i] = 65535 - Math.min(65535, Math.max(0, Math.floor((depth[i] - lo) * scale)));
        counts[keys[i]]++;
      }
      for (let k = 0, sum = 0; k < 65536; k++) { const c = counts[k]; counts[k] = sum; sum += c; }
      for (let i = 0; i < g.n; i++) order[counts[keys[i]]++] = i;
      gl.bindBuffer(gl.ARRAY_BUFFER, indexBuf);
      gl.bufferSubData(gl.ARRAY_BUFFER, 0, order);
    }

    // Cameras: the embedded list (native size meta.width x meta.height) and a free orbit camera.
    const W0 = meta.width, H0 = meta.height;
    const cams = meta.cameras.map((c) => ({
      name: c.name, R: [0, 1, 2, 4, 5, 6, 8, 9, 10].map((k) => c.viewmat[k]), t: [c.viewmat[3], c.viewmat[7], c.viewmat[11]],
      K: [c.K[0], c.K[4], c.K[2], c.K[5]] }));
    const up = meta.up;
    let cam = null, target = null, bg = parseBg(opts.bg || "", meta.background), dirty = true, sorted = false, frames = 0;

    function jumpTo(i) {
      const c = cams[i];
      cam = { R: c.R.slice(), t: c.t.slice(), K: c.K.slice() };
      // Orbit pivot: the point of the optical axis nearest the scene's centre.
      const C = centerOf(cam), z = row(cam.R, 2);
      target = add3(C, z, Math.max(dot3(add3(meta.target, C, -1), z), 1e-3));
      document.querySelectorAll("#cams button").forEach((b, k) => b.classList.toggle("on", k === i));
      dirty = true; sorted = false;
    }
    function moveCamera(Q, pivot) {  // rotate the camera rigidly by Q about pivot
      const C = centerOf(cam);
      const C2 = add3(pivot, apply3(Q, add3(C, pivot, -1)));
      cam.R = matmul3(cam.R, transpose3(Q));
      cam.t = apply3(cam.R, C2).map((v) => -v);
      dirty = true; sorted = false;
    }
    function translate(dv) {
      const C = add3(centerOf(cam), dv);
      target = add3(target, dv);
      cam.t = apply3(cam.R, C).map((v) => -v);
      dirty = true; sorted = false;
    }
    // Orbit about the pivot: yaw turns right-handedly about the scene's up (as cameras.orbit_rig's
    // yaw), pitch lifts the camera towards up; both in radians.
    const orbitBy = (yaw, pitch) => {
      moveCamera(matmul3(axisAngle(up, yaw), axisAngle(row(cam.R, 0), -pitch)), target);
    };
    const orbit = (dx, dy) => orbitBy(-0.008 * dx, -0.008 * dy);
    const pan = (dx, dy) => {
      const dist = Math.hypot(...add3(centerOf(cam), target, -1));
      translate(add3(row(cam.R, 0).map((v) => -v * dx * dist / cam.K[0] / viewScale()),
                     row(cam.R, 1).map((v) => -v * dy * dist / cam.K[1] / viewScale())));
    };
    const zoom = (factor) => {
      const C = centerOf(cam);
      const C2 = add3(target, add3(C, target, -1).map((v) => v * factor));
      cam.t = apply3(cam.R, C2).map((v) => -v);
      dirty = true; sorted = false;
    };

    // Canvas size in device pixels; the native camera is fitted (centred, aspect kept) into it.
    let cw = 0, ch = 0;
    function resize() {
      const dpr = Math.min(window.devicePixelRatio || 1, 2);
      if (opts.w && opts.h) { cw = parseInt(opts.w, 10); ch = parseInt(opts.h, 10); }
      else { cw = Math.round(window.innerWidth * dpr); ch = Math.round(window.innerHeight * dpr); }
      canvas.width = cw; canvas.height = ch;
      canvas.style.width = cw / dpr + "px"; canvas.style.height = ch / dpr + "px";
      gl.viewport(0, 0, cw, ch);
      resizeTarget(cw, ch);
      dirty = true;
    }
    const viewScale = () => Math.min(cw / W0, ch / H0);

    function draw() {
      if (!sorted) { sortByDepth(cam); sorted = true; }
      const s = viewScale(), ox = (cw - W0 * s) / 2, oy = (ch - H0 * s) / 2;
      gl.uniform3fv(U.u_R0, row(cam.R, 0)); gl.uniform3fv(U.u_R1, row(cam.R, 1)); gl.uniform3fv(U.u_R2, row(cam.R, 2));
      gl.uniform3fv(U.u_t, cam.t);
      gl.uniform4f(U.u_K, cam.K[0] * s, cam.K[1] * s, cam.K[2] * s + ox, cam.K[3] * s + oy);
      gl.uniform2f(U.u_size, cw, ch);
      gl.uniform3fv(U.u_center, centerOf(cam));
      gl.bindFramebuffer(gl.FRAMEBUFFER, fbo);  // null (the canvas) without a float target
      gl.clearColor(bg[0], bg[1], bg[2], 1);
      gl.clear(gl.COLOR_BUFFER_BIT);
      gl.useProgram(prog);
      gl.bindVertexArray(vao);
      gl.enable(gl.BLEND);
      gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, g.n);
      if (floatTarget) {
        gl.bindFramebuffer(gl.FRAMEBUFFER, null);
        gl.disable(gl.BLEND);
        gl.useProgram(blit);
        gl.drawArrays(gl.TRIANGLES, 0, 3);
      }
      frames++;
      if (frames === 1) {
        gl.finish();
        const err = gl.getError();
        if (err !== gl.NO_ERROR) throw new Error("WebGL error " + err + " while drawing");
        body.dataset.state = "ready";
      }
      body.dataset.frames = String(frames);
      body.dataset.viewmat = [...row(cam.R, 0), cam.t[0], ...row(cam.R, 1), cam.t[1], ...row(cam.R, 2), cam.t[2]].join(",");
    }
    function loop() {
      if (dirty) { dirty = false; try { draw(); } catch (e) { fail(e.message); return; } }
      requestAnimationFrame(loop);
    }

    // Panel.
    document.getElementById("name").textContent = meta.name;
    document.getElementById("count").textContent = g.n.toLocaleString() + " Gaussians, SH " + g.degree;
    const list = document.getElementById("cams");
    cams.forEach((c, i) => {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = String(i); b.title = c.name;
      b.onclick = () => { jumpTo(i); history.replaceState(null, "", "#" + setHash({ camera: i })); };
      list.appendChild(b);
    });
    function setHash(kv) {
      const o = Object.assign(parseHash(), kv);
      return Object.entries(o).map(([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v)).join("&");
    }
    const bgNames = Object.keys(BACKGROUNDS);
    document.getElementById("bg").onclick = () => {
      const k = bgNames.findIndex((n) => BACKGROUNDS[n].every((v, j) => v === bg[j]));
      bg = BACKGROUNDS[bgNames[(k + 1) % bgNames.length]];
      dirty = true;
    };
    let current = meta.initial_camera;
    document.getElementById("reset").onclick = () => jumpTo(current);

    // Mouse: left drag orbits, right / shift drag pans, wheel zooms. Touch: 1 finger orbits, 2 pan + pinch.
    let last = null;
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    canvas.addEventListener("mousedown", (e) => { last = { x: e.clientX, y: e.clientY, pan: e.button === 2 || e.shiftKey }; });
    window.addEventListener("mouseup", () => { last = null; });
    window.addEventListener("mousemove", (e) => {
      if (!last) return;
      const dx = e.clientX - last.x, dy = e.clientY - last.y;
      last.x = e.clientX; last.y = e.clientY;
      const dpr = Math.min(window.devicePixelRatio || 1, 2);
      if (last.pan) pan(dx * dpr, dy * dpr); else orbit(dx, dy);
    });
    canvas.addEventListener("wheel", (e) => { e.preventDefault(); zoom(Math.exp(0.001 * e.deltaY)); }, { passive: false });
    let touches = null;
    const touchState = (e) => {
      const t = Array.from(e.touches).map((p) => [p.clientX, p.clientY]);
      if (t.length < 2) return { n: t.length, c: t[0] || [0, 0], d: 0 };
      return { n: 2, c: [(t[0][0] + t[1][0]) / 2, (t[0][1] + t[1][1]) / 2], d: Math.hypot(t[0][0] - t[1][0], t[0][1] - t[1][1]) };
    };
    canvas.addEventListener("touchstart", (e) => { e.preventDefault(); touches = touchState(e); }, { passive: false });
    canvas.addEventListener("touchend", (e) => { touches = touchState(e); });
    canvas.addEventListener("touchmove", (e) => {
      e.preventDefault();
      const t = touchState(e);
      if (touches && t.n === touches.n) {
        const dx = t.c[0] - touches.c[0], dy = t.c[1] - touches.c[1];
        if (t.n === 1) orbit(dx, dy);
        else { pan(dx, dy); if (touches.d > 0 && t.d > 0) zoom(touches.d / t.d); }
      }
      touches = t;
    }, { passive: false });
    window.addEventListener("resize", resize);

    if (opts.camera !== undefined) {
      const i = parseInt(opts.camera, 10);
      if (!(i >= 0 && i < cams.length)) throw new Error("#camera=" + opts.camera + " is not one of the " + cams.length + " cameras (0.." + (cams.length - 1) + ")");
      current = i;
    }
    resize();
    jumpTo(current);
    if (opts.yaw || opts.pitch) orbitBy((Number(opts.yaw) || 0) * Math.PI / 180, (Number(opts.pitch) || 0) * Math.PI / 180);
    loop();
  }

  try {
    main();
  } catch (e) {
    fail(e.message || String(e));
  }
})();
