#!/usr/bin/env python3
"""Generates schema.rs, the protobuf decoder's schema table.

Usage (from this directory):
  python3 schema_gen.py core/v1:Namespace core/v1:ConfigMap core/v1:Secret \
    core/v1:ServiceAccount core/v1:Service core/v1:Pod core/v1:Endpoints \
    core/v1:Node core/v1:Event apps/v1:Deployment apps/v1:ReplicaSet \
    apps/v1:StatefulSet batch/v1:Job batch/v1:CronJob coordination/v1:Lease \
    discovery/v1:EndpointSlice networking/v1:Ingress > schema.rs

Tag numbers and wire types come from the k8s-pb 0.9.0 sources in the cargo
registry (`cargo fetch` with k8s-pb as a dev-dependency); JSON names, Go
pointer-ness and `json:",inline"` from the Go types (checked tag by tag
against k8s-pb: a field missing on either side is an error).
"""
import re, subprocess, glob, sys, os
PB = glob.glob(os.path.expanduser('~/.cargo/registry/src/*/k8s-pb-0.9.0/src'))[0]
# Git clones of github.com/kubernetes/api and github.com/kubernetes/apimachinery
# (read at tag REV below, matching k8s-pb 0.9.0 = Kubernetes 1.35).
API = os.environ.get('K8S_API_GIT', '/work/.mirror/kubernetes+api/repo')
MACH = os.environ.get('K8S_APIMACHINERY_GIT', '/work/.mirror/kubernetes+apimachinery/repo')

# ---- k8s-pb (tags, wire kinds, message types) ----
def parse_pb(modpath):
    text = open(os.path.join(PB, *modpath, 'mod.rs')).read()
    msgs = {}
    for m in re.finditer(r'^pub struct (\w+) \{\n(.*?)^\}', text, re.S | re.M):
        name, body = m.group(1), m.group(2)
        lines = body.split('\n'); fields = []; i = 0
        while i < len(lines):
            a = re.match(r'\s*#\[prost\((.*)\)\]\s*$', lines[i])
            if a:
                attr = a.group(1); i += 1; decl = ''
                while True:
                    decl += ' ' + lines[i].strip(); i += 1
                    if decl.rstrip().endswith(',') and decl.count('<') == decl.count('>'):
                        break
                fm = re.match(r'\s*pub (?:r#)?(\w+):\s*(.*),$', decl.replace(', >', '>'))
                tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
                fields.append((tag, attr, fm.group(1), fm.group(2)))
            else:
                i += 1
        msgs[name] = fields
    return msgs

PBMODS = {}
def pb(modpath):
    key = tuple(modpath)
    if key not in PBMODS: PBMODS[key] = parse_pb(modpath)
    return PBMODS[key]

def resolve(modpath, ty):
    # last type inside generics
    inner = ty
    for w in ['::core::option::Option<', '::prost::alloc::vec::Vec<', '::prost::alloc::boxed::Box<']:
        inner = inner.replace(w, '')
    inner = inner.rstrip('>, ').strip()
    if 'BTreeMap<' in inner:
        inner = inner.split(',')[-1].strip()
    parts = inner.split('::'); mp = list(modpath)
    while parts[0] == 'super':
        mp.pop(); parts.pop(0)
    return tuple(mp + parts[:-1]) if len(parts) > 1 else tuple(modpath), parts[-1]

# ---- Go (json names, pointers, inline) ----
GOPKG = {
  ('api','core','v1'): API+':core/v1', ('api','apps','v1'): API+':apps/v1', ('api','batch','v1'): API+':batch/v1', ('api','coordination','v1'): API+':coordination/v1', ('api','discovery','v1'): API+':discovery/v1', ('api','networking','v1'): API+':networking/v1',
  ('apimachinery','pkg','apis','meta','v1'): MACH+':pkg/apis/meta/v1',
}
GOCACHE = {}
REV = 'v0.35.0'
def go_structs(modpath):
    key = GOPKG[tuple(modpath)]
    if key in GOCACHE: return GOCACHE[key]
    repo, d = key.split(':')
    files = subprocess.run(['git','-C',repo,'ls-tree','--name-only',REV,d+'/'],capture_output=True,text=True).stdout.split()
    structs = {}
    for f in files:
        if not f.endswith('.go') or f.endswith('_test.go'): continue
        src = subprocess.run(['git','-C',repo,'show',REV+':'+f],capture_output=True,text=True).stdout
        for m in re.finditer(r'^type (\w+) struct \{\n(.*?)^\}', src, re.S | re.M):
            fl = []
            for line in m.group(2).split('\n'):
                s = line.strip()
                if not s or s.startswith('//'): continue
                fm = re.match(r'^(\w+(?:\.\w+)?)(?:\s+([^\s`]+))?\s+`([^`]*)`', s)
                if not fm: continue
                gname, gtype, tags = fm.groups()
                pm = re.search(r'protobuf:"\w+,(\d+),', tags)
                jm = re.search(r'json:"([^"]*)"', tags)
                if not pm: continue
                jparts = jm.group(1).split(',') if jm else ['']
                fl.append(dict(tag=int(pm.group(1)), json=jparts[0], omitempty='omitempty' in jparts[1:],
                               inline='inline' in jparts[1:], type=gtype or gname, embedded=gtype is None))
            structs[m.group(1)] = fl
    GOCACHE[key] = structs
    return structs

SPECIAL = {('apimachinery','pkg','util','intstr'): {'IntOrString':'IntOrString'},
           ('apimachinery','pkg','api','resource'): {'Quantity':'Quantity'},
           ('apimachinery','pkg','apis','meta','v1'): {'Time':'Time','MicroTime':'MicroTime','Duration':'Duration'}}
META_SKIP = {'selfLink','uid','generation','creationTimestamp','deletionTimestamp','deletionGracePeriodSeconds','managedFields'}

ROOTS = [(('api',)+tuple(r.split(':')[0].split('/')), r.split(':')[1]) for r in sys.argv[1:]]

GONAME = {}
def const(n): return re.sub(r'(?<!^)(?=[A-Z][a-z])|(?<=[a-z0-9])(?=[A-Z])', '_', n).upper()
out = {}   # (mod,name) -> list of field tuples
order = []
def visit(mod, name):
    if (mod, name) in out: return
    out[(mod, name)] = None
    gs = go_structs(mod)
    gname = name if name in gs else [k for k in gs if k.lower()==name.lower()][0]
    gos = gs[gname]
    GONAME[(mod,name)] = gname
    gobytag = {g['tag']: g for g in gos}
    fields = []
    for tag, attr, rname, rtype in pb(mod)[name]:
        g = gobytag.get(tag)
        if g is None: sys.exit(f'no Go field for {name} tag {tag} ({rname})')
        json = g['json']
        if json == 'status' or (name == 'ObjectMeta' and json in META_SKIP):
            fields.append((tag, json or rname, 'One', 'Skip', 'NonZero')); continue
        ptr = g['type'].startswith('*')
        if 'btree_map' in attr:
            shape = 'Map'; vk = re.search(r'btree_map = "string, (\w+)"', attr).group(1)
            kind = {'string':'string','bytes':'bytes','message':'message'}[vk]
        else:
            shape = 'List' if 'repeated' in attr else 'One'
            kind = attr.split(',')[0].strip()
            if kind.startswith('bytes'): kind = 'bytes'
        if kind == 'string': ty = 'Str'
        elif kind == 'bool': ty = 'Bool'
        elif kind in ('int32','int64'): ty = 'Int'
        elif kind == 'bytes': ty = 'Bytes'
        elif kind == 'message':
            tmod, tname = resolve(mod, rtype)
            sp = SPECIAL.get(tmod, {}).get(tname)
            if sp: ty = sp
            else:
                visit(tmod, tname)
                ty = ('Inline' if g['inline'] else 'Msg') + '(&' + '@@' + '|'.join(tmod) + '|' + tname + '@@' + ')'
        else: sys.exit(f'unsupported {attr} in {name}')
        if g['inline'] and not ty.startswith('Inline'): sys.exit(f'inline non-message {name}.{tag}')
        if shape != 'One': emit = 'NonZero'
        elif ptr: emit = 'Present'
        elif ty.startswith('Msg') or ty.startswith('Inline'): emit = 'Always'
        else: emit = 'NonZero'
        fields.append((tag, json, shape, ty, emit))
    out[(mod, name)] = fields
    order.append((mod, name))

for mod, n in ROOTS: visit(mod, n)
names = [GONAME[k] for k in order]
import collections
CNT = collections.Counter(names)
def CN(mod, n):
    gn = GONAME[(tuple(mod), n)]
    return (mod[-2].upper() + '_' if CNT[gn] > 1 else '') + const(gn)

def _unused(n): return re.sub(r'(?<!^)(?=[A-Z][a-z])|(?<=[a-z0-9])(?=[A-Z])', '_', n).upper()
print('//! The schema: every message the decoder knows, field by field.')
print('//!')
print('//! @generated by schema_gen.py from k8s-pb 0.9.0 (tag numbers, wire types) and the')
print('//! Go types of kubernetes/api and kubernetes/apimachinery v0.35.0 (JSON names,')
print('//! pointers, inlining); see the parent module for what each column means.')
print()
print('use super::{Emit::*, Message, Shape::*, Ty::*, f};')
print()
for mod, n in sorted(order, key=lambda x: GONAME[x]):
    gn = GONAME[(mod,n)]
    print(f'pub(super) static {CN(mod,n)}: Message = Message {{')
    print(f'    name: "{gn}",')
    print(f'    fields: &[')
    for tag, json, shape, ty, emit in out[(mod, n)]:
        ty = re.sub(r'@@([^@]*)@@', lambda m: CN(tuple(m.group(1).split('|')[:-1]), m.group(1).split('|')[-1]), ty)
        print(f'        f({tag}, "{json}", {shape}, {ty}, {emit}),')
    print('    ],')
    print('};')
print(f'// {len(order)} messages', file=sys.stderr)
GV = {'core':'v1','apps':'apps/v1','batch':'batch/v1','coordination':'coordination.k8s.io/v1','discovery':'discovery.k8s.io/v1','networking':'networking.k8s.io/v1'}
print()
print('/// The objects decoded in full, by apiVersion and kind.')
print('pub(super) static KINDS: &[(&str, &str, &Message)] = &[')
for mod, n in ROOTS:
    print(f'    ("{GV[mod[1]]}", "{GONAME[(mod, n)]}", &{CN(mod, n)}),')
print('];')
