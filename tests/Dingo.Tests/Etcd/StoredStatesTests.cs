using System.Text.Json;
using System.Text.Json.Nodes;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Etcd;

/// <summary>
/// The typed states (<see cref="NodeState"/>, <see cref="NodeRole"/>, <see cref="OperationState"/>, ...) read records as
/// the version before them wrote them to etcd, strings and all, and write them back byte for byte the same: etcd data
/// stays compatible both ways. The JSON below is what that version (614f43a) wrote.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class StoredStatesTests
{
    private const string Status =
        """{"nodeId":"n-1a2b3c4d","instanceId":"i-1","cellId":"cell-1","state":"running","detail":"no action: I hold the leader key","host":"127.0.0.1","port":5433,"role":"primary","restarts":1,"lsn":50331648,"timeline":2,"streaming":false,"writable":true,"decision":"no action: I hold the leader key","connections":3,"updatedAt":"2026-12-06T03:00:00+00:00"}""";

    private const string ReplicaStatus =
        """{"nodeId":"n-2","instanceId":"i-1","cellId":"cell-2","state":"failed","detail":"following n-1a2b3c4d — failed: etcd unreachable","host":"127.0.0.1","port":5434,"role":"replica","restarts":0,"lsn":50331000,"timeline":2,"streaming":true,"following":"n-1a2b3c4d","writable":false,"decision":"following n-1a2b3c4d","failingSince":"2026-12-06T02:59:58+00:00","updatedAt":"2026-12-06T03:00:00+00:00"}""";

    private const string Operation =
        """{"id":"op-7","kind":"deprovision","state":"in progress","description":"stopping nodes","startedAt":"2026-12-06T03:00:00+00:00","updatedAt":"2026-12-06T03:00:01+00:00"}""";

    private const string Port = """{"instanceId":"i-1","state":"retired","role":"read-only"}""";

    private const string Binding =
        """{"id":"b-1","instanceId":"i-1","serviceId":"svc","planId":"plan","appGuid":"app","bindResourceJson":"{}","parametersJson":"{}","role":{"username":"u_b1","password":"plain"},"state":"ready","createdAt":"2026-12-06T03:00:00+00:00"}""";

    private const string Instance =
        """{"id":"i-1","serviceId":"svc","planId":"plan","organizationGuid":"org","spaceGuid":"space","parametersJson":"{}","contextJson":"{}","port":12001,"readOnlyPort":12002,"nodeCount":2,"database":"dingo","superuser":{"username":"dingo","password":"plain"},"desired":"absent","createdAt":"2026-12-06T03:00:00+00:00"}""";

    private static void SameJson(string expected, string actual, params string[] without)
    {
        var (e, a) = (JsonNode.Parse(expected)!.AsObject(), JsonNode.Parse(actual)!.AsObject());
        foreach (var name in without) { e.Remove(name); a.Remove(name); }
        Assert.True(JsonNode.DeepEquals(e, a), $"expected {e.ToJsonString()}\nactual   {a.ToJsonString()}");
    }

    [Fact]
    public void Node_statuses_read_and_write_as_before()
    {
        var leader = Json.Deserialize<NodeStatus>(Status);
        Assert.Equal((NodeState.Running, NodeRole.Primary), (leader.State, leader.Role));
        SameJson(Status, Json.Serialize(leader));
        var replica = Json.Deserialize<NodeStatus>(ReplicaStatus);
        Assert.Equal((NodeState.Failed, NodeRole.Replica), (replica.State, replica.Role));
        SameJson(ReplicaStatus, Json.Serialize(replica));
        // A node without data says so (a leader nobody could take over from holds a long lease); one with data writes nothing new.
        var cloning = leader with { State = NodeState.Initialising, Role = NodeRole.Unknown, NoData = true };
        Assert.Contains("\"noData\":true", Json.Serialize(cloning), StringComparison.Ordinal);
        Assert.True(Json.Deserialize<NodeStatus>(Json.Serialize(cloning)).NoData);
        Assert.False(replica.NoData);
        // A status without a role (written before roles were reported) reads as unknown.
        Assert.Equal(NodeRole.Unknown, Json.Deserialize<NodeStatus>(Status.Replace("\"role\":\"primary\",", "", StringComparison.Ordinal)).Role);
    }

    [Fact]
    public void Operations_ports_bindings_and_instances_read_and_write_as_before()
    {
        var op = Json.Deserialize<OperationRecord>(Operation);
        Assert.Equal((OperationKind.Deprovision, OperationState.InProgress, true), (op.Kind, op.State, op.InProgress));
        SameJson(Operation, Json.Serialize(op));

        var port = Json.Deserialize<PortRecord>(Port);
        Assert.Equal((PortState.Retired, PortRole.ReadOnly), (port.State, port.Role));
        SameJson(Port, Json.Serialize(port));
        Assert.Equal(PortRole.Primary, Json.Deserialize<PortRecord>("""{"instanceId":"i-1","state":"active"}""").Role);

        // Credentials are sealed when written again: everything else is as it was.
        var binding = Json.Deserialize<BindingRecord>(Binding);
        Assert.Equal(BindingState.Ready, binding.State);
        SameJson(Binding, Json.Serialize(binding), "role");
        Assert.Equal(BindingState.Creating, Json.Deserialize<BindingRecord>(Binding.Replace(",\"state\":\"ready\"", "", StringComparison.Ordinal)).State);

        var instance = Json.Deserialize<InstanceRecord>(Instance);
        Assert.Equal(DesiredState.Absent, instance.Desired);
        SameJson(Instance, Json.Serialize(instance), "superuser");
        Assert.Equal(DesiredState.Present, Json.Deserialize<InstanceRecord>(Instance.Replace("\"desired\":\"absent\",", "", StringComparison.Ordinal)).Desired);
    }

    [Theory]
    [InlineData("\"state\":\"hibernating\"")] // a state this version does not know
    [InlineData("\"state\":2")]               // a number: never how a state was stored
    [InlineData("\"state\":\"Running\"")]     // the C# name is not the stored one
    public void A_state_no_member_names_is_refused(string state)
    {
        var json = Status.Replace("\"state\":\"running\"", state, StringComparison.Ordinal);
        Assert.Throws<JsonException>(() => Json.Deserialize<NodeStatus>(json));
    }

    [Fact]
    public void Wire_names_are_the_stored_strings_both_ways()
    {
        Assert.Equal("in progress", OperationState.InProgress.Wire());
        Assert.Equal("read-only", PortRole.ReadOnly.Wire());
        foreach (var state in Enum.GetValues<NodeState>())
        {
            Assert.True(WireNames.TryParseWire<NodeState>(state.Wire(), out var back));
            Assert.Equal(state, back);
            Assert.Equal($"\"{state.Wire()}\"", JsonSerializer.Serialize(state, Json.Options));
        }
        Assert.False(WireNames.TryParseWire<NodeRole>("Primary", out _));
        Assert.False(WireNames.TryParseWire<NodeRole>(null, out _));
    }
}
