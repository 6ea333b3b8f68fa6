// pybind11 wrapper around phasic's C library (liblibphasic.so, phasic==0.32.1).
//
// Everything numeric is computed by the C library. The only arithmetic done
// here is the *composition* of ptd_expected_waiting_time calls into moments,
// variance and covariance, copied from phasic's own pybind layer
// (src/cpp/phasic_pybind.cpp: _moments, _variance, _covariance,
// _variance_discrete, _covariance_discrete), because the C library has no
// moment/variance/covariance function of its own.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

extern "C" {
#include "phasic.h"
}

namespace py = pybind11;
using dvec = std::vector<double>;

static void check_err(const char *what) {
    if (ptd_err[0] != '\0') {
        std::string msg = std::string(what) + ": " + (const char *) ptd_err;
        ptd_err[0] = '\0';
        throw std::runtime_error(msg);
    }
}

static void throw_err(const char *what) {
    std::string msg = std::string(what) + " failed";
    if (ptd_err[0] != '\0') {
        msg += ": ";
        msg += (const char *) ptd_err;
        ptd_err[0] = '\0';
    }
    throw std::runtime_error(msg);
}

template <typename T>
static std::vector<T> to_vec(py::array_t<T, py::array::c_style | py::array::forcecast> a) {
    auto buf = a.request();
    if (buf.ndim != 1) throw std::invalid_argument("expected a 1-D array");
    const T *p = static_cast<const T *>(buf.ptr);
    return std::vector<T>(p, p + buf.shape[0]);
}

class RefGraph {
public:
    ptd_graph *g = nullptr;
    size_t n = 0;
    bool discrete = false;
    bool parameterized = false;
    size_t n_params = 0;

    // Constant-weight graph.
    RefGraph(size_t n_vertices,
             py::array_t<long long, py::array::c_style | py::array::forcecast> src,
             py::array_t<long long, py::array::c_style | py::array::forcecast> dst,
             py::array_t<double, py::array::c_style | py::array::forcecast> weight,
             bool discrete_) {
        auto s = to_vec<long long>(src), d = to_vec<long long>(dst);
        auto w = to_vec<double>(weight);
        if (s.size() != d.size() || s.size() != w.size())
            throw std::invalid_argument("src, dst, weight must have equal length");
        build_vertices(n_vertices, discrete_);
        try {
            for (size_t e = 0; e < s.size(); ++e) {
                check_index(s[e]); check_index(d[e]);
                double we = w[e];
                // The edge-mode lock lives in phasic's C++ wrapper (Vertex::add_edge),
                // not in ptd_graph_add_edge: replicate it.
                if (s[e] != 0) g->edge_mode = PTD_EDGE_MODE_CONSTANT;
                if (ptd_graph_add_edge(g->vertices[s[e]], g->vertices[d[e]], &we, 1) == NULL)
                    throw_err("ptd_graph_add_edge");
                check_err("ptd_graph_add_edge");
            }
        } catch (...) {
            ptd_graph_destroy(g); g = nullptr; throw;
        }
    }

    // Parameterized graph: edge weight = coefficients[e] . theta (no constant
    // term); edges out of the starting vertex are IPV edges with fixed weight
    // ipv_weight[e].
    RefGraph(size_t n_vertices,
             py::array_t<long long, py::array::c_style | py::array::forcecast> src,
             py::array_t<long long, py::array::c_style | py::array::forcecast> dst,
             py::array_t<double, py::array::c_style | py::array::forcecast> coefficients,
             py::array_t<double, py::array::c_style | py::array::forcecast> ipv_weight,
             bool discrete_, bool /*tag*/) {
        auto s = to_vec<long long>(src), d = to_vec<long long>(dst);
        auto ipvw = to_vec<double>(ipv_weight);
        auto cb = coefficients.request();
        if (cb.ndim != 2) throw std::invalid_argument("coefficients must be (E, P)");
        size_t E = cb.shape[0], P = cb.shape[1];
        if (s.size() != E || d.size() != E || ipvw.size() != E)
            throw std::invalid_argument("src, dst, coefficients, weight must have equal length E");
        if (P < 1) throw std::invalid_argument("need at least one parameter");
        const double *C = static_cast<const double *>(cb.ptr);
        build_vertices(n_vertices, discrete_);
        parameterized = true;
        n_params = P;
        try {
            ptd_graph_set_param_length(g, P);
            check_err("ptd_graph_set_param_length");
            for (size_t e = 0; e < E; ++e) {
                check_index(s[e]); check_index(d[e]);
                ptd_edge *edge;
                if (s[e] == 0) {
                    double we = ipvw[e];
                    edge = ptd_graph_add_edge(g->vertices[0], g->vertices[d[e]], &we, 1);
                } else {
                    dvec c(C + e * P, C + (e + 1) * P);
                    // as phasic's C++ Vertex::add_edge_parameterized
                    g->edge_mode = PTD_EDGE_MODE_PARAMETERIZED;
                    edge = ptd_graph_add_edge(g->vertices[s[e]], g->vertices[d[e]], c.data(), P);
                }
                if (edge == NULL) throw_err("ptd_graph_add_edge");
                check_err("ptd_graph_add_edge");
            }
        } catch (...) {
            ptd_graph_destroy(g); g = nullptr; throw;
        }
    }

    ~RefGraph() {
        if (g != nullptr) ptd_graph_destroy(g);
        g = nullptr;
    }

    RefGraph(const RefGraph &) = delete;
    RefGraph &operator=(const RefGraph &) = delete;

    // ---- helpers ----------------------------------------------------------
    void build_vertices(size_t n_vertices, bool discrete_) {
        if (n_vertices < 1) throw std::invalid_argument("n_vertices must be >= 1");
        n = n_vertices;
        discrete = discrete_;
        g = ptd_graph_create(1);
        if (g == NULL) throw_err("ptd_graph_create");
        for (size_t i = 1; i < n; ++i) {
            int *state = (int *) malloc(sizeof(int));
            state[0] = (int) i;
            ptd_vertex *v = ptd_vertex_create_state(g, state);
            if (v == NULL) { free(state); ptd_graph_destroy(g); g = nullptr; throw_err("ptd_vertex_create_state"); }
            // 0.32.1 copies the state; older versions took ownership.
            if (v->state != state) free(state);
        }
        if (g->vertices_length != n || g->vertices[0] != g->starting_vertex) {
            ptd_graph_destroy(g); g = nullptr;
            throw std::runtime_error("unexpected vertex layout in C graph");
        }
        for (size_t i = 0; i < n; ++i) {
            if (g->vertices[i]->index != i) {
                ptd_graph_destroy(g); g = nullptr;
                throw std::runtime_error("unexpected vertex index in C graph");
            }
        }
        if (discrete) g->was_dph = true;  // as phasic's Graph.set_was_dph(True)
    }

    void check_index(long long i) const {
        if (i < 0 || (size_t) i >= n) throw std::out_of_range("vertex index out of range");
    }

    void check_rewards(const dvec &r) const {
        if (!r.empty() && r.size() != n)
            throw std::invalid_argument("rewards must have length n_vertices");
    }

    void require_ready() const {
        if (g == nullptr) throw std::runtime_error("graph was freed");
    }

    // ---- C calls ------------------------------------------------------------
    dvec ewt(const dvec &rewards) {
        require_ready();
        check_rewards(rewards);
        dvec r = rewards;  // the C function takes a non-const pointer
        double *res = ptd_expected_waiting_time(g, r.empty() ? NULL : r.data());
        if (res == NULL) throw_err("ptd_expected_waiting_time");
        dvec out(res, res + g->vertices_length);
        free(res);
        check_err("ptd_expected_waiting_time");
        return out;
    }

    // phasic_pybind.cpp: _moments
    dvec moments(int power, const dvec &rewards) {
        if (power <= 0) throw std::invalid_argument("power must be >= 1");
        dvec res(power);
        dvec r2 = ewt(rewards), r3(r2.size());
        res[0] = r2[0];
        double fac = 1.0;
        for (int i = 1; i < power; ++i) {
            if (!rewards.empty()) {
                for (size_t j = 0; j < r2.size(); ++j) r3[j] = r2[j] * rewards[j];
            } else {
                r3 = r2;
            }
            r2 = ewt(r3);
            fac *= (double) (i + 1);
            res[i] = fac * r2[0];
        }
        return res;
    }

    // phasic_pybind.cpp: _variance / _variance_discrete
    double variance(const dvec &rewards) {
        if (!discrete) {
            dvec e = ewt(rewards);
            dvec nr(e.size());
            for (size_t i = 0; i < e.size(); ++i) nr[i] = rewards.empty() ? e[i] : e[i] * rewards[i];
            dvec second = ewt(nr);
            return 2 * second[0] - e[0] * e[0];
        }
        if (rewards.empty()) {
            dvec m = moments(2, rewards);
            return m[1] - 2 * m[0];
        }
        dvec sq(rewards.size());
        for (size_t i = 0; i < rewards.size(); ++i) sq[i] = rewards[i] * rewards[i];
        dvec mr = moments(2, rewards), mrr = moments(1, sq);
        return mr[1] - mr[0] * mr[0] - mrr[0];
    }

    // phasic_pybind.cpp: _covariance / _covariance_discrete
    double covariance(const dvec &r1, const dvec &r2) {
        if (r1.size() != n || r2.size() != n)
            throw std::invalid_argument("covariance needs two reward vectors of length n_vertices");
        dvec e1 = ewt(r1), e2 = ewt(r2);
        dvec a(n), b(n);
        if (!discrete) {
            for (size_t i = 0; i < n; ++i) { a[i] = e1[i] * r2[i]; b[i] = e2[i] * r1[i]; }
            return ewt(a)[0] + ewt(b)[0] - e1[0] * e2[0];
        }
        dvec sq(n);
        for (size_t i = 0; i < n; ++i) { sq[i] = r1[i] * r2[i]; a[i] = e1[i] * r2[i]; }
        return ewt(a)[0] + moments(1, sq)[0] - moments(1, r1)[0] * moments(1, r2)[0];
    }

    double reward_transform_expectation(const dvec &rewards) {
        require_ready();
        if (rewards.size() != n) throw std::invalid_argument("rewards must have length n_vertices");
        ptd_graph *h;
        if (discrete) {
            std::vector<int> ir(n);
            for (size_t i = 0; i < n; ++i) {
                ir[i] = (int) std::lround(rewards[i]);
                if ((double) ir[i] != rewards[i])
                    throw std::invalid_argument("discrete reward transform needs integer rewards");
            }
            h = ptd_graph_dph_reward_transform(g, ir.data());
            if (h == NULL) throw_err("ptd_graph_dph_reward_transform");
        } else {
            dvec r = rewards;
            h = ptd_graph_reward_transform(g, r.data());
            if (h == NULL) throw_err("ptd_graph_reward_transform");
        }
        double *res = ptd_expected_waiting_time(h, NULL);
        if (res == NULL) { ptd_graph_destroy(h); throw_err("ptd_expected_waiting_time"); }
        double out = res[0];
        free(res);
        ptd_graph_destroy(h);
        check_err("reward_transform_expectation");
        return out;
    }

    // Mirrors phasiccpp.h Graph::pdf/cdf: one context, step while
    // time >= context->time, value = series[floor(granularity * time)].
    std::pair<dvec, dvec> pdf_cdf(const dvec &times, long long granularity) {
        require_ready();
        if (discrete) throw std::runtime_error("pdf/cdf are for continuous graphs; use pmf/dph_cdf");
        double tmax = 0;
        for (double t : times) {
            if (!(t >= 0) || !std::isfinite(t)) throw std::invalid_argument("times must be finite and >= 0");
            if (t > tmax) tmax = t;
        }
        ptd_probability_distribution_context *ctx =
            ptd_probability_distribution_context_create(g, (int64_t) granularity);
        if (ctx == NULL) throw_err("ptd_probability_distribution_context_create");
        dvec P{ctx->pdf}, C{ctx->cdf};
        while (tmax >= (double) ctx->time) {
            if (ptd_probability_distribution_step(ctx) != 0) {
                ptd_probability_distribution_context_destroy(ctx);
                throw_err("ptd_probability_distribution_step");
            }
            P.push_back(ctx->pdf);
            C.push_back(ctx->cdf);
        }
        int64_t gran = ctx->granularity;
        ptd_probability_distribution_context_destroy(ctx);
        dvec po(times.size()), co(times.size());
        for (size_t i = 0; i < times.size(); ++i) {
            size_t k = (size_t) ((double) gran * times[i]);
            if (k >= P.size()) k = P.size() - 1;
            po[i] = P[k];
            co[i] = C[k];
        }
        return {po, co};
    }

    long long default_granularity() {
        require_ready();
        ptd_probability_distribution_context *ctx = ptd_probability_distribution_context_create(g, 0);
        if (ctx == NULL) throw_err("ptd_probability_distribution_context_create");
        long long gran = ctx->granularity;
        ptd_probability_distribution_context_destroy(ctx);
        return gran;
    }

    std::pair<dvec, dvec> pmf_cdf(const std::vector<long long> &ks) {
        require_ready();
        long long kmax = 0;
        for (long long k : ks) {
            if (k < 0) throw std::invalid_argument("ks must be >= 0");
            if (k > kmax) kmax = k;
        }
        ptd_dph_probability_distribution_context *ctx = ptd_dph_probability_distribution_context_create(g);
        if (ctx == NULL) throw_err("ptd_dph_probability_distribution_context_create");
        dvec P{ctx->pmf}, C{ctx->cdf};
        for (long long j = ctx->jumps; j < kmax; ++j) {
            if (ptd_dph_probability_distribution_step(ctx) != 0) {
                ptd_dph_probability_distribution_context_destroy(ctx);
                throw_err("ptd_dph_probability_distribution_step");
            }
            P.push_back(ctx->pmf);
            C.push_back(ctx->cdf);
        }
        ptd_dph_probability_distribution_context_destroy(ctx);
        dvec po(ks.size()), co(ks.size());
        for (size_t i = 0; i < ks.size(); ++i) { po[i] = P[ks[i]]; co[i] = C[ks[i]]; }
        return {po, co};
    }

    double defect() {
        require_ready();
        double d = ptd_defect(g);
        check_err("ptd_defect");
        return d;
    }

    dvec sample(size_t count, const dvec &rewards, unsigned int seed) {
        require_ready();
        check_rewards(rewards);
        dvec r = rewards;
        srand(seed);  // ptd_random_sample / ptd_dph_random_sample draw from rand()
        dvec out(count);
        for (size_t i = 0; i < count; ++i) {
            long double x = discrete ? ptd_dph_random_sample(g, r.empty() ? NULL : r.data())
                                     : ptd_random_sample(g, r.empty() ? NULL : r.data());
            out[i] = (double) x;
        }
        check_err("ptd_random_sample");
        return out;
    }

    void update_weights(const dvec &theta) {
        require_ready();
        if (!parameterized) throw std::runtime_error("update_weights needs a parameterized graph");
        if (theta.size() != n_params) throw std::invalid_argument("theta must have length P");
        dvec t = theta;
        ptd_graph_update_weights(g, t.data(), t.size(), false);
        check_err("ptd_graph_update_weights");
    }

    dvec edge_weights() {
        require_ready();
        dvec w;
        for (size_t i = 0; i < g->vertices_length; ++i)
            for (size_t j = 0; j < g->vertices[i]->edges_length; ++j)
                w.push_back(g->vertices[i]->edges[j]->weight);
        return w;
    }

    py::dict cache_info() {
        require_ready();
        py::dict d;
        d["reward_compute_graph"] = g->reward_compute_graph != NULL;
        d["reward_compute_graph_length"] = g->reward_compute_graph ? g->reward_compute_graph->length : 0;
        d["parameterized_reward_compute_graph"] = g->parameterized_reward_compute_graph != NULL;
        d["parameterized_reward_compute_graph_ptr"] = (size_t) g->parameterized_reward_compute_graph;
        d["parameterized_reward_compute_graph_off"] = g->parameterized_reward_compute_graph_off != NULL;
        d["elimination_trace"] = g->elimination_trace != NULL;
        d["weight_version"] = g->weight_version;
        d["c_parameterized"] = g->parameterized;
        d["param_length"] = g->param_length;
        d["edge_mode"] = (int) g->edge_mode;
        d["was_dph"] = g->was_dph;
        return d;
    }
};

static py::array_t<double> arr(const dvec &v) {
    py::array_t<double> a(v.size());
    if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(double));
    return a;
}

static dvec opt_vec(py::object o) {
    if (o.is_none()) return dvec();
    return to_vec<double>(py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(o));
}

PYBIND11_MODULE(_core, m) {
    m.doc() = "Thin pybind11 wrapper over phasic 0.32.1's C library (liblibphasic)";

    py::class_<RefGraph>(m, "_Graph")
        .def(py::init<size_t, py::array_t<long long, py::array::c_style | py::array::forcecast>,
                      py::array_t<long long, py::array::c_style | py::array::forcecast>,
                      py::array_t<double, py::array::c_style | py::array::forcecast>, bool>(),
             py::arg("n_vertices"), py::arg("src"), py::arg("dst"), py::arg("weight"), py::arg("discrete"))
        .def(py::init<size_t, py::array_t<long long, py::array::c_style | py::array::forcecast>,
                      py::array_t<long long, py::array::c_style | py::array::forcecast>,
                      py::array_t<double, py::array::c_style | py::array::forcecast>,
                      py::array_t<double, py::array::c_style | py::array::forcecast>, bool, bool>(),
             py::arg("n_vertices"), py::arg("src"), py::arg("dst"), py::arg("coefficients"),
             py::arg("ipv_weight"), py::arg("discrete"), py::arg("parameterized_tag"))
        .def_readonly("n_vertices", &RefGraph::n)
        .def_readonly("discrete", &RefGraph::discrete)
        .def_readonly("is_parameterized", &RefGraph::parameterized)
        .def_readonly("n_params", &RefGraph::n_params)
        .def("expected_waiting_time", [](RefGraph &self, py::object r) { return arr(self.ewt(opt_vec(r))); },
             py::arg("rewards") = py::none())
        .def("moments", [](RefGraph &self, int k, py::object r) { return arr(self.moments(k, opt_vec(r))); },
             py::arg("k"), py::arg("rewards") = py::none())
        .def("variance", [](RefGraph &self, py::object r) { return self.variance(opt_vec(r)); },
             py::arg("rewards") = py::none())
        .def("covariance", [](RefGraph &self, py::object a, py::object b) {
                 return self.covariance(opt_vec(a), opt_vec(b)); },
             py::arg("rewards1"), py::arg("rewards2"))
        .def("reward_transform_expectation", [](RefGraph &self, py::object r) {
                 return self.reward_transform_expectation(opt_vec(r)); }, py::arg("rewards"))
        .def("pdf_cdf", [](RefGraph &self, py::object t, long long gran) {
                 auto pc = self.pdf_cdf(opt_vec(t), gran);
                 return py::make_tuple(arr(pc.first), arr(pc.second)); },
             py::arg("times"), py::arg("granularity") = 0)
        .def("default_granularity", &RefGraph::default_granularity)
        .def("pmf_cdf", [](RefGraph &self, py::array_t<long long, py::array::c_style | py::array::forcecast> ks) {
                 auto pc = self.pmf_cdf(to_vec<long long>(ks));
                 return py::make_tuple(arr(pc.first), arr(pc.second)); }, py::arg("ks"))
        .def("defect", &RefGraph::defect)
        .def("sample", [](RefGraph &self, size_t count, py::object r, unsigned int seed) {
                 return arr(self.sample(count, opt_vec(r), seed)); },
             py::arg("n"), py::arg("rewards") = py::none(), py::arg("seed") = 0)
        .def("update_weights", [](RefGraph &self, py::object t) { self.update_weights(opt_vec(t)); },
             py::arg("theta"))
        .def("edge_weights", [](RefGraph &self) { return arr(self.edge_weights()); })
        .def("cache_info", &RefGraph::cache_info);
}
