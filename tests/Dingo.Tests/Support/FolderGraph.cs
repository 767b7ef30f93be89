using Mono.Cecil;

namespace Dingo.Tests.Support;

/// <summary>
/// Which folder (namespace) of one assembly uses which other folder of the same assembly, read from its compiled IL:
/// signatures, attributes and method bodies, with compiler-made types (closures, async state machines) counted as
/// the type they belong to. Each edge keeps its examples ("A uses B") so a failing rule says where to look.
/// </summary>
public sealed class FolderGraph
{
    private readonly Dictionary<string, Dictionary<string, SortedSet<string>>> _edges = new(StringComparer.Ordinal);

    private FolderGraph() { }

    public IReadOnlyCollection<string> Folders => _edges.Keys;

    public IReadOnlyDictionary<string, SortedSet<string>> Uses(string folder) => _edges.TryGetValue(folder, out var to) ? to : new();

    public static FolderGraph Read(string assemblyPath)
    {
        using var module = ModuleDefinition.ReadModule(assemblyPath);
        var own = module.GetTypes().Select(Outermost).Where(t => t.Namespace.StartsWith("Dingo", StringComparison.Ordinal))
            .Select(t => t.FullName).ToHashSet(StringComparer.Ordinal);
        var graph = new FolderGraph();
        foreach (var type in module.GetTypes())
        {
            var from = Outermost(type);
            if (!own.Contains(from.FullName)) continue;
            graph._edges.TryAdd(from.Namespace, new(StringComparer.Ordinal));
            foreach (var used in Referenced(type))
            {
                foreach (var target in Flatten(used))
                {
                    var top = Outermost(target);
                    if (top.Namespace == from.Namespace || !own.Contains(top.FullName)) continue;
                    var examples = graph._edges[from.Namespace];
                    if (!examples.TryGetValue(top.Namespace, out var set)) examples[top.Namespace] = set = new(StringComparer.Ordinal);
                    set.Add($"{from.Name} uses {top.Name}");
                }
            }
        }
        return graph;
    }

    /// <summary>The groups of folders that reach each other (strongly connected, more than one folder), each sorted.</summary>
    public IReadOnlyList<IReadOnlyList<string>> Cycles()
    {
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        var low = new Dictionary<string, int>(StringComparer.Ordinal);
        var stack = new Stack<string>();
        var onStack = new HashSet<string>(StringComparer.Ordinal);
        var found = new List<IReadOnlyList<string>>();
        var next = 0;

        void Visit(string v)
        {
            index[v] = low[v] = next++;
            stack.Push(v);
            onStack.Add(v);
            foreach (var w in Uses(v).Keys)
            {
                if (!index.ContainsKey(w)) { Visit(w); low[v] = Math.Min(low[v], low[w]); }
                else if (onStack.Contains(w)) low[v] = Math.Min(low[v], index[w]);
            }
            if (low[v] != index[v]) return;
            var group = new List<string>();
            string x;
            do { x = stack.Pop(); onStack.Remove(x); group.Add(x); } while (x != v);
            if (group.Count > 1) found.Add(group.Order(StringComparer.Ordinal).ToList());
        }

        foreach (var v in _edges.Keys.Order(StringComparer.Ordinal))
            if (!index.ContainsKey(v)) Visit(v);
        return found;
    }

    /// <summary>The edges inside one group, for the failure message.</summary>
    public IEnumerable<string> Explain(IReadOnlyList<string> group) =>
        group.SelectMany(f => Uses(f).Where(e => group.Contains(e.Key)).Select(e => $"{f} -> {e.Key}: {string.Join(", ", e.Value)}"));

    private static TypeReference Outermost(TypeReference type)
    {
        while (type.DeclaringType is { } outer) type = outer;
        return type;
    }

    private static IEnumerable<TypeReference> Flatten(TypeReference type)
    {
        switch (type)
        {
            case GenericInstanceType generic:
                foreach (var t in Flatten(generic.ElementType)) yield return t;
                foreach (var argument in generic.GenericArguments)
                    foreach (var t in Flatten(argument)) yield return t;
                break;
            case TypeSpecification spec:
                foreach (var t in Flatten(spec.ElementType)) yield return t;
                break;
            case GenericParameter:
                break;
            default:
                yield return type;
                break;
        }
    }

    private static IEnumerable<TypeReference> Referenced(TypeDefinition type)
    {
        if (type.BaseType is { } baseType) yield return baseType;
        foreach (var i in type.Interfaces) yield return i.InterfaceType;
        foreach (var a in type.CustomAttributes) yield return a.AttributeType;
        foreach (var g in type.GenericParameters)
            foreach (var c in g.Constraints) yield return c.ConstraintType;
        foreach (var field in type.Fields) yield return field.FieldType;
        foreach (var property in type.Properties) yield return property.PropertyType;
        foreach (var e in type.Events) yield return e.EventType;
        foreach (var method in type.Methods)
        {
            foreach (var t in Signature(method)) yield return t;
            foreach (var a in method.CustomAttributes) yield return a.AttributeType;
            if (!method.HasBody) continue;
            foreach (var local in method.Body.Variables) yield return local.VariableType;
            foreach (var handler in method.Body.ExceptionHandlers)
                if (handler.CatchType is { } caught) yield return caught;
            foreach (var instruction in method.Body.Instructions)
            {
                switch (instruction.Operand)
                {
                    case TypeReference t:
                        yield return t;
                        break;
                    case MethodReference m:
                        yield return m.DeclaringType;
                        foreach (var t in Signature(m)) yield return t;
                        if (m is GenericInstanceMethod gm)
                            foreach (var t in gm.GenericArguments) yield return t;
                        break;
                    case FieldReference f:
                        yield return f.DeclaringType;
                        yield return f.FieldType;
                        break;
                }
            }
        }
    }

    private static IEnumerable<TypeReference> Signature(MethodReference method)
    {
        yield return method.ReturnType;
        foreach (var p in method.Parameters) yield return p.ParameterType;
    }
}
